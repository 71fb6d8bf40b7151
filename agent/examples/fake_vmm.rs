//! A stand-in for `novacron-vmm` that follows the command-line and control-socket contract
//! of `vmm/API.md` without running a guest, so the management plane can be tested end to end
//! where the real VMM is not available. It is a test double only; the e2e tests run the real
//! VMM by default.
//!
//! The "guest" is a tick counter: the serial file gets `READY`, `PROGRESS ... ticks=N` and
//! `CHECK PASS workload=fake ticks=N` lines. `migrate` sends the counter (and the machine
//! options, which the destination checks) over TCP; the destination continues counting.
//! Command-line knobs for tests: `crash_after_ms=N` (exit 1), `reset_after_ms=N` (exit 10
//! once per process), and for the commit point of a migration: `lose_confirm=1` (the source
//! ignores the destination's answer, which runs the guest) and `die_before_confirm=1` (the
//! destination exits before answering). A source whose answer is missing stays paused "in
//! doubt", as the real VMM does: `info` says `indoubt` and only `resume` or `shutdown` end it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use novacron_vmm_api::migration::MigrationSummary;
use novacron_vmm_api::protocol::{
    decode_request, encode_response, Empty, Info, Lifecycle, Reply, Request,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

#[derive(Default, Clone)]
struct Opts {
    kernel: String,
    cmdline: String,
    memory: String,
    vcpus: String,
    serial: String,
    api_socket: String,
    incoming: String,
}

struct Vm {
    opts: Opts,
    ticks: AtomicU64,
    state: Mutex<Lifecycle>,
    paused: AtomicBool,
    started: Instant,
    exit: Mutex<Option<i32>>,
    serial: Mutex<Option<std::fs::File>>,
    /// The last migration sent its state and got no answer (the contract's `indoubt`).
    in_doubt: AtomicBool,
}

impl Vm {
    fn say(&self, line: &str) {
        if let Some(f) = self.serial.lock().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
    fn set_state(&self, s: Lifecycle) {
        *self.state.lock() = s;
    }
    fn state(&self) -> Lifecycle {
        *self.state.lock()
    }
    fn exit_with(&self, code: i32) {
        *self.exit.lock() = Some(code);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("fake-vmm: {msg}");
    std::process::exit(2)
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts::default();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut val = || {
            i += 1;
            args.get(i)
                .cloned()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a {
            "--kernel" => o.kernel = val(),
            "--initrd" | "--disk" | "--net" | "--restore" => {
                val();
            }
            "--cmdline" => o.cmdline = val(),
            "--memory" => o.memory = val(),
            "--vcpus" => o.vcpus = val(),
            "--serial" => o.serial = val(),
            "--api-socket" => o.api_socket = val(),
            "--incoming" => o.incoming = val(),
            "--paused" => {}
            // The stand-in's stream is its own plain protocol: it takes the credential
            // flags of a `tls:` destination and ignores them.
            "--migration-id"
            | "--incoming-timeout"
            | "--migration-tls-ca"
            | "--migration-tls-cert"
            | "--migration-tls-key" => {
                val();
            }
            "--help" => {
                println!("fake-vmm run: --migration-id ID --incoming-timeout SECS (accepted)");
                std::process::exit(0)
            }
            other => usage(&format!("unknown option {other}")),
        }
        i += 1;
    }
    o
}

fn knob(cmdline: &str, key: &str) -> Option<u64> {
    cmdline.split_whitespace().find_map(|kv| {
        kv.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("run") {
        usage("only `run` is implemented");
    }
    let mut opts = parse(&args[1..]);
    if opts.memory.is_empty() {
        opts.memory = "128M".into();
    }
    if opts.vcpus.is_empty() {
        opts.vcpus = "1".into();
    }
    if opts.incoming.is_empty()
        && (opts.kernel.is_empty() || !std::path::Path::new(&opts.kernel).is_file())
    {
        eprintln!("fake-vmm: kernel {:?} not found", opts.kernel);
        std::process::exit(1);
    }
    let serial = opts.serial.strip_prefix("file:").and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let vm = Arc::new(Vm {
        opts: opts.clone(),
        ticks: AtomicU64::new(0),
        state: Mutex::new(if opts.incoming.is_empty() {
            Lifecycle::Running
        } else {
            Lifecycle::Incoming
        }),
        paused: AtomicBool::new(false),
        started: Instant::now(),
        exit: Mutex::new(None),
        serial: Mutex::new(serial),
        in_doubt: AtomicBool::new(false),
    });

    if !opts.api_socket.is_empty() {
        let _ = std::fs::remove_file(&opts.api_socket);
        let l = match UnixListener::bind(&opts.api_socket) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fake-vmm: api socket {}: {e}", opts.api_socket);
                std::process::exit(1);
            }
        };
        let vm2 = Arc::clone(&vm);
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let vm3 = Arc::clone(&vm2);
                std::thread::spawn(move || serve_api(conn, vm3));
            }
        });
    }

    if !opts.incoming.is_empty() {
        let addr = opts
            .incoming
            .strip_prefix("tcp:")
            .or_else(|| opts.incoming.strip_prefix("tls:"))
            .unwrap_or_else(|| usage("--incoming needs tls:HOST:PORT or tcp:HOST:PORT"))
            .to_string();
        let l = match TcpListener::bind(&addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fake-vmm: incoming {addr}: {e}");
                std::process::exit(1);
            }
        };
        match receive(l, &vm) {
            Ok(ticks) => {
                vm.ticks.store(ticks, Ordering::SeqCst);
                vm.set_state(Lifecycle::Running);
                vm.say(&format!("MIGRATED IN ticks={ticks}"));
            }
            Err(e) => {
                eprintln!("fake-vmm: incoming migration failed: {e}");
                std::process::exit(1);
            }
        }
    } else {
        vm.say(&format!("READY fake-vmm cmdline={:?}", opts.cmdline));
    }

    let crash_after = knob(&opts.cmdline, "crash_after_ms");
    let reset_after = knob(&opts.cmdline, "reset_after_ms");
    let mut last_check = Instant::now();
    loop {
        if let Some(code) = *vm.exit.lock() {
            let _ = std::fs::remove_file(&opts.api_socket);
            std::process::exit(code);
        }
        let up = vm.started.elapsed().as_millis() as u64;
        if crash_after.is_some_and(|c| up >= c) {
            eprintln!("fake-vmm: simulated crash");
            std::process::exit(1);
        }
        if reset_after.is_some_and(|r| up >= r) {
            vm.say("RESET requested by guest");
            std::process::exit(10);
        }
        if !vm.paused.load(Ordering::SeqCst) && vm.state() == Lifecycle::Running {
            let t = vm.ticks.fetch_add(1, Ordering::SeqCst) + 1;
            if t.is_multiple_of(5) {
                vm.say(&format!("PROGRESS workload=fake ticks={t}"));
            }
            if last_check.elapsed() >= Duration::from_millis(500) {
                vm.say(&format!("CHECK PASS workload=fake ticks={t}"));
                last_check = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn receive(l: TcpListener, vm: &Vm) -> Result<u64, String> {
    let (s, _) = l.accept().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
    // The guest's command line travels with it (an incoming VMM is started without one).
    let cmdline = v["cmdline"].as_str().unwrap_or_default();
    if knob(cmdline, "die_before_confirm") == Some(1) {
        eprintln!("fake-vmm: die_before_confirm: exiting before the confirmation");
        std::process::exit(1);
    }
    let mut w = s;
    if v["memory"] != json!(vm.opts.memory) || v["vcpus"] != json!(vm.opts.vcpus) {
        let _ = writeln!(
            w,
            "{}",
            json!({"ok": false, "error": "machine options differ"})
        );
        return Err(format!("machine options differ: {v}"));
    }
    writeln!(w, "{}", json!({"ok": true})).map_err(|e| e.to_string())?;
    v["ticks"].as_u64().ok_or_else(|| "no ticks".to_string())
}

fn migrate(vm: &Vm, to: &str) -> Result<MigrationSummary, String> {
    let addr = to
        .strip_prefix("tcp:")
        .or_else(|| to.strip_prefix("tls:"))
        .ok_or_else(|| format!("bad target {to}"))?;
    let t0 = Instant::now();
    let mut s = None;
    for _ in 0..50 {
        match TcpStream::connect(addr) {
            Ok(c) => {
                s = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut s = s.ok_or_else(|| format!("cannot connect to {addr}"))?;
    vm.set_state(Lifecycle::Migrating);
    let pause = Instant::now();
    vm.paused.store(true, Ordering::SeqCst);
    let ticks = vm.ticks.load(Ordering::SeqCst);
    let msg = json!({
        "ticks": ticks,
        "memory": vm.opts.memory,
        "vcpus": vm.opts.vcpus,
        "cmdline": vm.opts.cmdline,
    });
    writeln!(s, "{msg}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    let read = BufReader::new(s).read_line(&mut line);
    if knob(&vm.opts.cmdline, "lose_confirm") == Some(1) {
        line.clear();
    }
    if !matches!(read, Ok(n) if n > 0) || line.is_empty() {
        // The state went out and no answer came back: the destination may run the guest.
        vm.in_doubt.store(true, Ordering::SeqCst);
        return Err(format!(
            "migration in doubt: no answer from the destination ({read:?})"
        ));
    }
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
    if v["ok"] != json!(true) {
        vm.paused.store(false, Ordering::SeqCst);
        vm.set_state(Lifecycle::Running);
        return Err(format!("destination refused: {}", v["error"]));
    }
    Ok(MigrationSummary {
        ok: true,
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        downtime_ms: pause.elapsed().as_secs_f64() * 1000.0,
        rounds: 1,
        wire_bytes: 64,
        ..Default::default()
    })
}

/// The `info` answer of an in-doubt VMM.
fn in_doubt_info(vm: &Vm) -> String {
    encode_response(&Ok(Reply::Info(Info {
        state: Lifecycle::InDoubt,
        vcpus: vm.opts.vcpus.parse().unwrap_or(1),
        memory_mib: vm.opts.memory.trim_end_matches('M').parse().unwrap_or(0),
        pid: std::process::id(),
        uptime_ms: vm.started.elapsed().as_millis() as u64,
        kernel: vm.opts.kernel.clone(),
        dirty_log: None,
        dirty_pages_per_sec: 0,
    })))
}

fn serve_api(conn: UnixStream, vm: Arc<Vm>) {
    let Ok(read) = conn.try_clone() else { return };
    let mut w = conn;
    for line in BufReader::new(read).lines() {
        let Ok(line) = line else { return };
        let req = match decode_request(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = w.write_all(encode_response::<Reply>(&Err(e.to_string())).as_bytes());
                continue;
            }
        };
        if vm.in_doubt.load(Ordering::SeqCst) {
            let line = match req {
                Request::Info => in_doubt_info(&vm),
                Request::Resume => {
                    vm.in_doubt.store(false, Ordering::SeqCst);
                    vm.paused.store(false, Ordering::SeqCst);
                    vm.set_state(Lifecycle::Running);
                    encode_response(&Ok(Reply::Empty(Empty {})))
                }
                Request::Shutdown => {
                    let _ = w.write_all(encode_response(&Ok(Reply::Empty(Empty {}))).as_bytes());
                    vm.exit_with(0);
                    return;
                }
                _ => encode_response::<Reply>(&Err(
                    "the migration is in doubt: only resume or shutdown".to_string(),
                )),
            };
            if w.write_all(line.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let reply = match req {
            Request::Info => Ok(Reply::Info(Info {
                state: match vm.state() {
                    Lifecycle::Running if vm.paused.load(Ordering::SeqCst) => Lifecycle::Paused,
                    s => s,
                },
                vcpus: vm.opts.vcpus.parse().unwrap_or(1),
                memory_mib: vm.opts.memory.trim_end_matches('M').parse().unwrap_or(0),
                pid: std::process::id(),
                uptime_ms: vm.started.elapsed().as_millis() as u64,
                kernel: vm.opts.kernel.clone(),
                dirty_log: None,
                dirty_pages_per_sec: 100,
            })),
            Request::Pause => {
                vm.paused.store(true, Ordering::SeqCst);
                Ok(Reply::Empty(Empty {}))
            }
            Request::Resume => {
                vm.paused.store(false, Ordering::SeqCst);
                Ok(Reply::Empty(Empty {}))
            }
            Request::Shutdown => {
                let _ = w.write_all(encode_response(&Ok(Reply::Empty(Empty {}))).as_bytes());
                vm.exit_with(0);
                return;
            }
            // The fake's migration is one short exchange that cannot be stopped half-way.
            Request::Cancel => Err("the fake VMM's migration cannot be cancelled".to_string()),
            Request::Migrate(o) => match migrate(&vm, &o.to) {
                Ok(summary) => {
                    let reply = Reply::Migrated(Box::new(summary));
                    let _ = w.write_all(encode_response(&Ok(reply)).as_bytes());
                    vm.exit_with(0);
                    return;
                }
                Err(e) => Err(e),
            },
            Request::Snapshot { .. } => Err("the fake VMM does not write snapshots".to_string()),
            Request::TestHook(_) => Err("the fake VMM has no test hooks".to_string()),
        };
        if w.write_all(encode_response(&reply).as_bytes()).is_err() {
            return;
        }
    }
}
