//! Boots a Linux guest assembled from Debian packages (`images/linux/build.sh`: Debian's cloud
//! kernel bzImage + a busybox initramfs) on `novacron-vmm run`.
//!
//! On the nested-KVM CI hosts Linux gets only as far as its early boot messages (about a
//! minute) before it stops on an instruction the host kernel does not emulate, so this test
//! checks the boot path as far as it goes: the kernel's `Linux version` banner, the command
//! line we passed (with a random marker), the e820 map the VMM handed over, which must
//! describe 512 MiB of RAM, and that the kernel parsed the VMM's ACPI tables (RSDP, XSDT,
//! MADT) and took its 2 CPUs from the MADT (`smpboot: Allowing 2 CPUs`). On hardware KVM the
//! guest goes on to print `NOVACRON-LINUX READY` and power off; if that line shows up it is
//! checked as well.
//!
//! Needs /dev/kvm, root (apt-get) and the Debian mirrors; nothing is skipped.
//! `novacron-vmm` must already be built in the same target dir and profile as this test
//! (`cargo build -p novacron-vmm`, or `cargo build --workspace --bins`, before `cargo test`: a
//! test of the root package does not build another package's binary).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;
const GUEST_MEMORY_MIB: u64 = 512;
/// vCPUs: the kernel must find exactly these in the MADT.
const GUEST_VCPUS: u32 = 2;
/// How long the guest may take to print its early boot messages, counted in CPU time of the
/// VMM process (on an idle nested-KVM host that is about a minute, and wall time is about the
/// same; on a host busy with other work wall time stretches, CPU time does not).
const BOOT_CPU_BUDGET: Duration = Duration::from_secs(150);
/// Hard cap in wall time, however busy the host.
const BOOT_WALL_CAP: Duration = Duration::from_secs(420);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/novacron-vmm`, next to `target/<profile>/deps/<this test>`.
fn vmm_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent dir");
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent dir")
    } else {
        deps
    };
    let bin = profile_dir.join("novacron-vmm");
    assert!(
        bin.is_file(),
        "novacron-vmm not found at {} (build it in the same target dir and profile first: \
         `cargo build -p novacron-vmm`)",
        bin.display()
    );
    bin
}

/// A hex string unique enough for one test run.
fn random_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut x = nanos ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!("{x:016x}")
}

/// A scratch directory under the system temp dir, removed on drop unless `keep` was called.
struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("novacron-{tag}-{}", random_token()));
        fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir { path, keep: false }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() || self.keep {
            eprintln!("kept scratch dir {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Kills and reaps the VMM when the test ends, however it ends.
struct VmmGuard {
    child: Child,
}

impl Drop for VmmGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of a process so far (all its threads), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" closing the command name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    };
    Some(Duration::from_millis(ticks * 1000 / hz))
}

fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Runs images/linux/build.sh and returns (vmlinuz, initrd.cpio.gz).
fn build_linux_image() -> (PathBuf, PathBuf) {
    let script = repo_root().join("images/linux/build.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}):\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
        script.display(),
        out.status
    );
    let find = |suffix: &str| -> PathBuf {
        let line = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("build.sh printed no path ending in {suffix}:\n{stdout}"));
        let p = PathBuf::from(line);
        let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 0,
            "build.sh output {} is missing or empty",
            p.display()
        );
        p
    };
    let kernel = find("/vmlinuz");
    let initrd = find("/initrd.cpio.gz");
    eprintln!(
        "build.sh took {:.1} s: {} {}",
        started.elapsed().as_secs_f64(),
        kernel.display(),
        initrd.display()
    );
    (kernel, initrd)
}

/// The kernel release of a bzImage (e.g. `6.1.0-56-cloud-amd64`): the first word of the
/// string that the setup header's `kernel_version` field (offset 0x20e) points to, + 0x200.
fn bzimage_release(path: &Path) -> String {
    let img = fs::read(path).expect("read kernel");
    assert!(
        img.len() > 0x210 && &img[0x202..0x206] == b"HdrS",
        "{} is not a bzImage",
        path.display()
    );
    let off = u16::from_le_bytes([img[0x20e], img[0x20f]]) as usize + 0x200;
    let s = img.get(off..).unwrap_or_default();
    let end = s
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(s.len());
    let release = String::from_utf8_lossy(&s[..end]).into_owned();
    assert!(
        !release.is_empty(),
        "{} has no kernel_version string",
        path.display()
    );
    release
}

/// One `BIOS-e820: [mem 0xSTART-0xEND] TYPE` line.
#[derive(Debug, Clone, PartialEq)]
struct E820Entry {
    start: u64,
    end: u64, // inclusive, as the kernel prints it
    kind: String,
}

/// The e820 entries the kernel printed after `BIOS-provided physical RAM map:`.
/// Returns None until the header has been printed.
fn parse_e820(log: &str) -> Option<Vec<E820Entry>> {
    let header = log.find("BIOS-provided physical RAM map:")?;
    let mut entries = Vec::new();
    for line in log[header..].lines().skip(1) {
        let Some(pos) = line.find("BIOS-e820: [mem ") else {
            if entries.is_empty() {
                continue; // tolerate interleaved lines before the first entry
            }
            break;
        };
        let rest = &line[pos + "BIOS-e820: [mem ".len()..];
        let Some((range, kind)) = rest.split_once(']') else {
            break;
        };
        let Some((a, b)) = range.split_once('-') else {
            break;
        };
        let parse = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
        let (Some(start), Some(end)) = (parse(a), parse(b)) else {
            break;
        };
        entries.push(E820Entry {
            start,
            end,
            kind: kind.trim().to_string(),
        });
    }
    Some(entries)
}

/// What the serial log shows so far.
#[derive(Debug, Default)]
struct Progress {
    banner: Option<String>,
    cmdline: Option<String>,
    e820: Vec<E820Entry>,
    /// The e820 map is complete (a line after the last entry has been printed).
    e820_done: bool,
    /// The kernel found the VMM's RSDP and listed the MADT ("ACPI: APIC ...").
    acpi_tables: bool,
    /// "smpboot: Allowing N CPUs": the CPUs the kernel took from the MADT.
    smp_cpus: Option<String>,
    ready: bool,
}

impl Progress {
    fn from_log(log: &str, marker: &str) -> Self {
        let line_with = |pat: &str, also: Option<&str>| {
            log.lines()
                .find(|l| l.contains(pat) && also.is_none_or(|a| l.contains(a)))
                .map(|l| l.trim().to_string())
        };
        let e820 = parse_e820(log).unwrap_or_default();
        // The map is complete once some other line follows its last entry.
        let e820_done = !e820.is_empty() && {
            let last = log.rfind("BIOS-e820: [mem ").unwrap();
            log[last..]
                .lines()
                .nth(1)
                .is_some_and(|l| !l.trim().is_empty())
        };
        Progress {
            banner: line_with("Linux version ", None),
            cmdline: line_with("Command line:", Some(marker)),
            e820,
            e820_done,
            acpi_tables: log.contains("ACPI: RSDP 0x00000000000E0000")
                && log.contains("ACPI: APIC 0x"),
            smp_cpus: line_with("smpboot: Allowing ", None),
            ready: log.contains("NOVACRON-LINUX READY"),
        }
    }

    fn complete(&self) -> bool {
        self.banner.is_some() && self.cmdline.is_some() && self.e820_done
    }

    /// Also past the kernel's MADT parsing (`smpboot: Allowing N CPUs`).
    fn complete_with_acpi(&self) -> bool {
        self.complete() && self.smp_cpus.is_some()
    }
}

/// Checks that the usable RAM in the e820 map matches the guest memory size.
fn check_e820(entries: &[E820Entry], mem_mib: u64) -> Result<(), String> {
    let mem = mem_mib * MIB;
    let usable: Vec<&E820Entry> = entries.iter().filter(|e| e.kind == "usable").collect();
    if usable.is_empty() {
        return Err("no usable range".into());
    }
    for e in entries {
        if e.end < e.start {
            return Err(format!("inverted range {e:?}"));
        }
    }
    let mut sorted = usable.clone();
    sorted.sort_by_key(|e| e.start);
    for w in sorted.windows(2) {
        if w[1].start <= w[0].end {
            return Err(format!(
                "overlapping usable ranges {:?} and {:?}",
                w[0], w[1]
            ));
        }
    }
    // Below 3 GiB there is no PCI hole, so all RAM sits below `mem`.
    let top = sorted.last().unwrap().end + 1;
    if top > mem || top < mem - 16 * MIB {
        return Err(format!(
            "highest usable address {:#x} is not near the top of {mem_mib} MiB ({:#x})",
            top - 1,
            mem - 1
        ));
    }
    let total: u64 = sorted.iter().map(|e| e.end - e.start + 1).sum();
    if total > mem || total < mem - 16 * MIB {
        return Err(format!(
            "usable RAM totals {} KiB, expected about {mem_mib} MiB",
            total / 1024
        ));
    }
    Ok(())
}

#[test]
fn linux_boots_to_early_banner_with_our_cmdline_and_e820() {
    let (kernel, initrd) = build_linux_image();
    let vmm = vmm_binary();
    let scratch = ScratchDir::new("linuxboot");
    let serial = scratch.path.join("serial.log");
    let stderr_path = scratch.path.join("vmm.stderr");
    let marker = format!("linuxboot-{}", random_token());
    let cmdline = format!(
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=1 novacron.marker={marker}"
    );

    let started = Instant::now();
    let child = Command::new(&vmm)
        .arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--memory", &format!("{GUEST_MEMORY_MIB}M")])
        .args(["--vcpus", &GUEST_VCPUS.to_string()])
        .args(["--cmdline", &cmdline])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", vmm.display()));
    let mut guard = VmmGuard { child };

    let diagnostics = |what: &str, log: &str| -> String {
        format!(
            "{what}\n--- novacron-vmm stderr ({}) ---\n{}\n--- serial log ({}) ---\n{log}",
            stderr_path.display(),
            read_lossy(&stderr_path),
            serial.display()
        )
    };

    let pid = guard.child.id();
    let mut cpu = Duration::ZERO;
    let mut seen_banner = None;
    let mut seen_cmdline = None;
    let (progress, log) = loop {
        cpu = cpu_time(pid).unwrap_or(cpu);
        let log = read_lossy(&serial);
        let progress = Progress::from_log(&log, &marker);
        if seen_banner.is_none() && progress.banner.is_some() {
            seen_banner = Some(started.elapsed());
        }
        if seen_cmdline.is_none() && progress.cmdline.is_some() {
            seen_cmdline = Some(started.elapsed());
        }
        if progress.complete_with_acpi() {
            break (progress, log);
        }
        if let Some(status) = guard.child.try_wait().expect("try_wait") {
            // Whatever it wrote before exiting is in the file now.
            let log = read_lossy(&serial);
            let progress = Progress::from_log(&log, &marker);
            if progress.complete_with_acpi() {
                break (progress, log);
            }
            panic!(
                "{}",
                diagnostics(
                    &format!(
                        "novacron-vmm exited ({status}) after {:.1} s, before the kernel printed its \
                         banner, command line and e820 map ({progress:?})",
                        started.elapsed().as_secs_f64()
                    ),
                    &log
                )
            );
        }
        if cpu > BOOT_CPU_BUDGET || started.elapsed() > BOOT_WALL_CAP {
            panic!(
                "{}",
                diagnostics(
                    &format!(
                        "timed out after {:.1} s ({:.1} s of VMM CPU time; limits {} s CPU, {} s \
                         wall) waiting for the kernel's banner, command line and e820 map \
                         ({progress:?})",
                        started.elapsed().as_secs_f64(),
                        cpu.as_secs_f64(),
                        BOOT_CPU_BUDGET.as_secs(),
                        BOOT_WALL_CAP.as_secs()
                    ),
                    &log
                )
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let elapsed = started.elapsed();
    let cpu = cpu_time(pid).unwrap_or(cpu);
    let exited = guard.child.try_wait().ok().flatten();
    drop(guard); // kill the VMM

    eprintln!(
        "linux boot: banner after {:.1} s, command line after {:.1} s, e820 complete after {:.1} s \
         ({:.1} s of VMM CPU time){}",
        seen_banner.unwrap_or(elapsed).as_secs_f64(),
        seen_cmdline.unwrap_or(elapsed).as_secs_f64(),
        elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        match exited {
            Some(s) => format!(" (VMM had already exited: {s})"),
            None => String::new(),
        }
    );
    eprintln!("{}", progress.banner.as_deref().unwrap_or(""));
    eprintln!("{}", progress.cmdline.as_deref().unwrap_or(""));
    for e in &progress.e820 {
        eprintln!("  e820 {:#018x}-{:#018x} {}", e.start, e.end, e.kind);
    }

    let banner = progress.banner.as_deref().unwrap();
    let release = bzimage_release(&kernel);
    assert!(
        banner.contains(&format!("Linux version {release} ")),
        "{}",
        diagnostics(
            &format!("the banner is not that of the kernel we passed ({release})"),
            &log
        )
    );
    let cmd = progress.cmdline.as_deref().unwrap();
    assert!(
        cmd.contains(&format!("novacron.marker={marker}")) && cmd.contains("console=ttyS0"),
        "{}",
        diagnostics(
            &format!("command line not passed through intact: {cmd}"),
            &log
        )
    );
    if let Err(why) = check_e820(&progress.e820, GUEST_MEMORY_MIB) {
        panic!(
            "{}",
            diagnostics(
                &format!("e820 map inconsistent with {GUEST_MEMORY_MIB} MiB: {why}"),
                &log
            )
        );
    }
    // ACPI: the kernel parsed our RSDP/XSDT/MADT and took its CPUs from the MADT.
    assert!(
        progress.acpi_tables,
        "{}",
        diagnostics("the kernel did not list our ACPI tables", &log)
    );
    assert!(
        log.contains("ACPI: Using ACPI (MADT) for SMP configuration information"),
        "{}",
        diagnostics("the kernel did not use the MADT", &log)
    );
    let cpus = progress.smp_cpus.as_deref().unwrap_or("");
    assert!(
        cpus.contains(&format!(
            "smpboot: Allowing {GUEST_VCPUS} CPUs, 0 hotplug CPUs"
        )),
        "{}",
        diagnostics(
            &format!("the kernel found other CPUs than the MADT's {GUEST_VCPUS}: {cpus}"),
            &log
        )
    );
    eprintln!("{cpus}");
    if progress.ready {
        // Only on hosts where the guest gets to user space (hardware KVM).
        let after = &log[log.find("NOVACRON-LINUX READY").unwrap()..];
        assert!(
            after.contains(&format!("novacron.marker={marker}")),
            "{}",
            diagnostics("init printed READY but not our command line", &log)
        );
        eprintln!("guest reached user space: NOVACRON-LINUX READY");
    }
}

#[test]
fn bad_kernel_file_fails_with_one_clear_line() {
    let vmm = vmm_binary();
    let scratch = ScratchDir::new("badkernel");
    let kernel = scratch.path.join("not-a-kernel.txt");
    fs::write(
        &kernel,
        "this is a text file, not a Linux kernel image\n".repeat(64),
    )
    .unwrap();
    let stderr_path = scratch.path.join("vmm.stderr");

    let child = Command::new(&vmm)
        .arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", "64M", "--serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", vmm.display()));
    let mut guard = VmmGuard { child };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = guard.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "novacron-vmm run with a text file as kernel is still running after 30 s; stderr:\n{}",
            read_lossy(&stderr_path)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(guard);
    let stderr = read_lossy(&stderr_path);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    eprintln!("status {status}, stderr: {stderr:?}");

    // API.md: exit status 1 is "VMM error (bad input, ...); one line on stderr".
    assert_eq!(
        status.code(),
        Some(1),
        "expected exit status 1 (VMM error: bad input), got {status}; stderr:\n{stderr}"
    );
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got:\n{stderr}"
    );
    let line = lines[0];
    assert!(
        !line.contains("panicked") && !line.contains("RUST_BACKTRACE"),
        "the error is a panic, not a message: {line}"
    );
    assert!(
        line.to_lowercase().contains("kernel") || line.contains(&*kernel.to_string_lossy()),
        "the error line does not say the kernel is at fault: {line}"
    );
}

#[test]
fn e820_check_accepts_a_512m_map_and_rejects_others() {
    let log = "\
[    0.000000] Linux version 6.1.0-56-cloud-amd64\n\
[    0.000000] Command line: console=ttyS0 novacron.marker=linuxboot-x\n\
[    0.000000] BIOS-provided physical RAM map:\n\
[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n\
[    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved\n\
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable\n\
[    0.000000] NX (Execute Disable) protection: active\n";
    let p = Progress::from_log(log, "linuxboot-x");
    assert!(p.complete(), "{p:?}");
    assert_eq!(p.e820.len(), 3);
    assert_eq!(
        p.e820[2],
        E820Entry {
            start: 0x100000,
            end: 0x1fffffff,
            kind: "usable".into()
        }
    );
    check_e820(&p.e820, 512).unwrap();
    assert!(check_e820(&p.e820, 1024).is_err());
    assert!(check_e820(&p.e820, 128).is_err());
    // Map not finished yet: no line after the last entry.
    let partial = &log[..log.find("[    0.000000] NX").unwrap()];
    assert!(!Progress::from_log(partial, "linuxboot-x").complete());
    // Marker must be on the command line.
    assert!(!Progress::from_log(log, "linuxboot-y").complete());
    // The map QEMU/SeaBIOS gives a 512 MiB guest (top 128 KiB reserved, BIOS ranges above 4G-…).
    let qemu = "\
[    0.000000] Command line: console=ttyS0 novacron.marker=m\n\
[    0.000000] BIOS-provided physical RAM map:\n\
[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n\
[    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved\n\
[    0.000000] BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved\n\
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000001ffdffff] usable\n\
[    0.000000] BIOS-e820: [mem 0x000000001ffe0000-0x000000001fffffff] reserved\n\
[    0.000000] BIOS-e820: [mem 0x00000000feffc000-0x00000000feffffff] reserved\n\
[    0.000000] BIOS-e820: [mem 0x00000000fffc0000-0x00000000ffffffff] reserved\n\
[    0.000000] printk: bootconsole [earlyser0] enabled\n";
    let q = Progress::from_log(qemu, "m");
    assert_eq!(q.e820.len(), 7);
    check_e820(&q.e820, 512).unwrap();
    // Usable RAM beyond the guest's memory is rejected.
    let mut big = p.e820.clone();
    big.push(E820Entry {
        start: 0x1_0000_0000,
        end: 0x1_0fff_ffff,
        kind: "usable".into(),
    });
    assert!(check_e820(&big, 512).is_err());
}
