//! Shared harness of the management-plane end-to-end tests (`mgmt_e2e.rs` with the real
//! VMM and test guest, `mgmt_fake_vmm.rs` with the contract-following stand-in): spawns a
//! real `novacron-controller` and `novacron-agent` processes on distinct loopback addresses
//! (127.0.0.2, 127.0.0.3, ...), and cleans up every process it started (including the detached
//! VMMs and their supervisors, found by the test's private directory in their command line)
//! even when a test fails.
//!
//! Clusters run secured, as in production: [`Cluster::new`] creates the CA with
//! `novacron-controller certs init`, each agent gets its host certificate from
//! `certs issue`, and every client of the harness speaks mutual TLS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::net::free_port;
use crate::paths::bin_dir;
use novacron_proto::agent as apb;
use novacron_proto::agent::agent_client::AgentClient;
use novacron_proto::auth::AttachToken;
use novacron_proto::controller as pb;
use novacron_proto::controller::host_service_client::HostServiceClient;
use novacron_proto::controller::storage_service_client::StorageServiceClient;
use novacron_proto::controller::vm_service_client::VmServiceClient;
use novacron_security::pki::CONTROLLER_DNS_NAME;
use novacron_security::{tls, TlsMaterial};
use tonic::codegen::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A channel to the controller that attaches the admin's token to every call.
pub type Authed = InterceptedService<Channel, AttachToken>;

/// Which VMM the agents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// `novacron-vmm` booting the in-repo test guest.
    Real,
    /// `examples/fake_vmm` (the contract stand-in).
    Fake,
}

/// Serialises the tests of one binary: they share 2 cores with real guests.
pub fn serial() -> MutexGuard<'static, ()> {
    static L: OnceLock<Mutex<()>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(())).lock()
}

/// Runs one management scenario: serialised with the binary's other tests ([`serial`]), on
/// a 2-thread runtime, failing if it takes longer than `limit`.
pub fn run_scenario<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    let _serial = serial();
    // Building the binaries is not the scenario's time (the first scenario of a test binary
    // may rebuild them with the workspace's other feature set).
    ensure_binaries(Vmm::Real);
    ensure_binaries(Vmm::Fake);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        if tokio::time::timeout(limit, f).await.is_err() {
            panic!("scenario exceeded {limit:?}");
        }
    });
}

/// Builds the binaries the scenarios run (once per test process). `cargo test` builds the
/// executables of the package under test only, not the workspace's other binaries, so the
/// agent, controller, novactl and VMM are brought up to date here with `cargo build` into the
/// same target directory and profile.
pub fn ensure_binaries(vmm: Vmm) {
    static BUILT: OnceLock<Mutex<Vec<Vmm>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(|| Mutex::new(Vec::new())).lock();
    if built.contains(&vmm) {
        return;
    }
    let dir = bin_dir();
    let mut need = vec![
        dir.join("novacron-controller"),
        dir.join("novacron-agent"),
        dir.join("novactl"),
    ];
    match vmm {
        Vmm::Real => need.push(dir.join("novacron-vmm")),
        Vmm::Fake => need.push(dir.join("examples/fake_vmm")),
    }
    let profile = dir
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("debug")
        .to_string();
    let target = dir.parent().expect("target dir").to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "novacron-agent",
            "-p",
            "novacron-controller",
            "--bins",
            "--examples",
        ])
        .arg("--target-dir")
        .arg(&target);
    if vmm == Vmm::Real {
        cmd.args(["-p", "novacron-vmm"]);
    }
    if profile == "release" {
        cmd.arg("--release");
    }
    let st = cmd
        .status()
        .expect("running cargo build for the management binaries");
    assert!(
        st.success(),
        "cargo build of the management binaries failed"
    );
    for p in need {
        assert!(p.is_file(), "{} missing after cargo build", p.display());
    }
    built.push(vmm);
}

/// Environment variable naming another `novacron-vmm` binary for the agents to run (to try
/// the management plane against a VMM built elsewhere, e.g. from another branch). The file
/// must be named `novacron-vmm` (processes are counted by that name).
pub const VMM_BINARY_ENV: &str = "NOVACRON_TEST_VMM_BINARY";

/// The real VMM the agents run: [`VMM_BINARY_ENV`] if set, else this build's.
fn real_vmm_binary() -> PathBuf {
    match std::env::var_os(VMM_BINARY_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => bin_dir().join("novacron-vmm"),
    }
}

/// A controller, agents and their VMs, all inside one private directory.
pub struct Cluster {
    /// Private directory (removed on success).
    pub root: PathBuf,
    /// VMM kind.
    pub vmm: Vmm,
    /// Kernel the VMs boot.
    pub kernel: PathBuf,
    /// Their command line.
    pub cmdline: String,
    /// Controller HOST:PORT.
    pub ctl_addr: String,
    /// Extra controller arguments.
    pub ctl_args: Vec<String>,
    /// The controller's join endpoint (HOST:PORT).
    pub join_addr: String,
    agents: HashMap<String, (String, Vec<String>)>,
    procs: HashMap<String, Child>,
    /// The operator's client certificate (`certs init` made it), which the harness's
    /// controller clients and novactl present.
    pub client_tls: TlsMaterial,
    /// The controller's own TLS material (the only certificate agents serve).
    pub controller_tls: TlsMaterial,
    /// The bootstrap admin's API token (file: `<root>/admin.token`).
    pub admin_token: String,
    /// Run the controller and agents with `--insecure-dev` (plaintext gRPC; the token is
    /// still sent and checked): only to measure what TLS costs (`benches/`).
    pub insecure: bool,
    /// Another `novacron-vmm` for the agents started from now on (e.g.
    /// [`Cluster::use_testhooks_vmm`]); `None` runs this build's.
    pub vmm_binary: Option<PathBuf>,
}

/// Runs `novacron-controller ARGS` to completion (the `certs` commands), panicking on
/// failure.
pub fn controller_command(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(bin_dir().join("novacron-controller"))
        .args(args)
        .output()
        .expect("run novacron-controller");
    assert!(
        out.status.success(),
        "novacron-controller {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plaintext channel to `addr` (HOST:PORT); waits up to 20 s for the server to listen.
pub async fn plain_channel(addr: &str) -> Channel {
    connect(
        Endpoint::from_shared(format!("http://{addr}")).expect("endpoint"),
        addr,
    )
    .await
}

async fn connect(ep: Endpoint, addr: &str) -> Channel {
    let ep = ep.connect_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ep.connect().await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("{addr} unreachable: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A channel to `addr` (HOST:PORT) speaking mutual TLS with `m`, to a server whose
/// certificate names `server_name`; waits up to 20 s for the server to listen.
pub async fn tls_channel(addr: &str, m: &TlsMaterial, server_name: &str) -> Channel {
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls::mutual_client(m, server_name))
        .expect("tls config");
    connect(ep, addr).await
}

impl Cluster {
    /// An empty cluster; start processes with [`Cluster::start_controller`] and
    /// [`Cluster::start_agent`].
    pub fn new(tag: &str, vmm: Vmm, ctl_args: &[&str]) -> Self {
        ensure_binaries(vmm);
        let root = std::env::temp_dir().join(format!("ncm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("test dir");
        let (kernel, cmdline) = match vmm {
            Vmm::Real => (
                PathBuf::from(novacron_images::TESTGUEST_ELF),
                "workload=ab mib=16".to_string(),
            ),
            Vmm::Fake => {
                let k = root.join("fake-kernel.elf");
                std::fs::write(&k, b"not a kernel").expect("fake kernel");
                (k, "workload=ab mib=16".to_string())
            }
        };
        let ctl_addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let ctl_dir = root.join("controller");
        controller_command(&[
            "certs".as_ref(),
            "init".as_ref(),
            "--data-dir".as_ref(),
            ctl_dir.as_os_str(),
        ]);
        let pki = ctl_dir.join("pki");
        let client_tls = TlsMaterial::load(&pki.join("clients/admin")).expect("client bundle");
        let controller_tls = TlsMaterial::load(&pki).expect("controller bundle");
        // The first admin, and an API token of theirs for the harness's clients.
        let password = root.join("admin-password");
        std::fs::write(&password, "harness-password\n").expect("password file");
        let token_file = root.join("admin.token");
        controller_command(&[
            "bootstrap-admin".as_ref(),
            "--data-dir".as_ref(),
            ctl_dir.as_os_str(),
            "--user".as_ref(),
            "admin".as_ref(),
            "--password-file".as_ref(),
            password.as_os_str(),
            "--api-token-file".as_ref(),
            token_file.as_os_str(),
        ]);
        let admin_token = std::fs::read_to_string(&token_file)
            .expect("admin token")
            .trim()
            .to_string();
        Cluster {
            admin_token,
            join_addr: format!("127.0.0.1:{}", free_port("127.0.0.1")),
            client_tls,
            controller_tls,
            root,
            vmm,
            kernel,
            cmdline,
            ctl_addr,
            ctl_args: ctl_args.iter().map(|s| s.to_string()).collect(),
            agents: HashMap::new(),
            procs: HashMap::new(),
            insecure: false,
            vmm_binary: None,
        }
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("{name}.log")))
            .expect("log file")
    }

    /// Starts (or restarts) the controller, secured: the harness's clients present the
    /// operator's certificate and the bootstrap admin's API token (users, roles and tokens
    /// are proven by `controller/tests/iam_*.rs`).
    pub fn start_controller(&mut self) {
        let child = Command::new(bin_dir().join("novacron-controller"))
            .args(["--listen", &self.ctl_addr, "--data-dir"])
            .arg(self.root.join("controller"))
            .args(["--join-listen", &self.join_addr])
            .args(self.insecure.then_some("--insecure-dev"))
            .args(&self.ctl_args)
            .stdin(Stdio::null())
            .stdout(self.log("controller"))
            .stderr(self.log("controller"))
            .spawn()
            .expect("spawn controller");
        self.procs.insert("controller".into(), child);
    }

    /// Starts (or restarts, with the same address) an agent named `name` on loopback `ip`.
    pub fn start_agent(&mut self, name: &str, ip: &str, extra: &[&str]) {
        self.start_agent_env(name, ip, extra, &[]);
    }

    /// [`Cluster::start_agent`] with extra environment variables (the agent's test-only
    /// fault switch `NOVACRON_AGENT_TEST_FAULT`, for instance).
    pub fn start_agent_env(&mut self, name: &str, ip: &str, extra: &[&str], env: &[(&str, &str)]) {
        let (addr, extra) = match self.agents.get(name) {
            Some(a) => a.clone(),
            None => {
                let a = (
                    format!("{ip}:{}", free_port(ip)),
                    extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                );
                self.agents.insert(name.to_string(), a.clone());
                a
            }
        };
        let vmm = match self.vmm {
            Vmm::Real => self.vmm_binary.clone().unwrap_or_else(real_vmm_binary),
            Vmm::Fake => bin_dir().join("examples/fake_vmm"),
        };
        let tls_dir = self.root.join(name).join("tls");
        if !TlsMaterial::present(&tls_dir) {
            self.issue_host_cert(name);
        }
        self.stock_images(name);
        let child = Command::new(bin_dir().join("novacron-agent"))
            .args([
                "--listen",
                &addr,
                "--controller",
                &self.ctl_addr,
                "--name",
                name,
                "--data-dir",
            ])
            .arg(self.root.join(name))
            .arg("--vmm-binary")
            .arg(vmm)
            .args(["--stop-timeout-ms", "3000"])
            .args(self.insecure.then_some("--insecure-dev"))
            .args(&extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(self.log(name))
            .stderr(self.log(name))
            .spawn()
            .expect("spawn agent");
        self.procs.insert(name.to_string(), child);
    }

    /// Makes the agents started from now on run the test build's VMM with the misbehaviour
    /// hooks (`novacron-vmm-testhooks`), copied as `<root>/testhooks/novacron-vmm` (the
    /// harness counts VMM processes by that name).
    pub fn use_testhooks_vmm(&mut self) {
        let dir = self.root.join("testhooks");
        std::fs::create_dir_all(&dir).expect("testhooks dir");
        let to = dir.join("novacron-vmm");
        std::fs::copy(crate::paths::vmm_testhooks(), &to).expect("copy the testhooks VMM");
        self.vmm_binary = Some(to);
    }

    /// Issues the host certificate of agent `name` into its TLS directory
    /// (`certs issue --host`).
    pub fn issue_host_cert(&self, name: &str) {
        let out = self.root.join(name).join("tls");
        controller_command(&[
            "certs".as_ref(),
            "issue".as_ref(),
            "--data-dir".as_ref(),
            self.root.join("controller").as_os_str(),
            "--host".as_ref(),
            name.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
    }

    /// A channel to the controller: mutual TLS with the operator's client certificate
    /// (plaintext when [`Cluster::insecure`]).
    pub async fn ctl_channel(&self) -> Channel {
        if self.insecure {
            return plain_channel(&self.ctl_addr).await;
        }
        tls_channel(&self.ctl_addr, &self.client_tls, CONTROLLER_DNS_NAME).await
    }

    /// The images directory of the agent named `name` (agents take kernels and images from
    /// there only).
    pub fn images_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join("images")
    }

    /// Puts the cluster's kernel into the agent's images directory (VM specs name it by
    /// its file name).
    fn stock_images(&self, name: &str) {
        let images = self.images_dir(name);
        std::fs::create_dir_all(&images).expect("images dir");
        let to = images.join(self.kernel.file_name().expect("kernel file name"));
        if !to.exists() {
            std::fs::copy(&self.kernel, &to).expect("copy the kernel into the images dir");
        }
    }

    /// The gRPC address (HOST:PORT) of the agent named `name`.
    pub fn agent_addr(&self, name: &str) -> String {
        self.agents
            .get(name)
            .map(|a| a.0.clone())
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// A client of the agent named `name` (waits for it to listen), with the controller's
    /// certificate: agents serve no one else.
    pub async fn agent(&self, name: &str) -> AgentClient<Channel> {
        let addr = self.agent_addr(name);
        if self.insecure {
            return AgentClient::new(plain_channel(&addr).await);
        }
        AgentClient::new(tls_channel(&addr, &self.controller_tls, name).await)
    }

    /// Pids of the live VMM processes (not their supervisors) this cluster's agents started.
    pub fn vmm_pids(&self) -> Vec<i32> {
        let needle = self.root.as_os_str().as_encoded_bytes().to_vec();
        let exe = match self.vmm {
            Vmm::Real => "novacron-vmm",
            Vmm::Fake => "fake_vmm",
        };
        let mut pids = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
            let is_vmm = Path::new(std::ffi::OsStr::new(
                std::str::from_utf8(argv0).unwrap_or_default(),
            ))
            .file_name()
            .is_some_and(|n| n == exe);
            if is_vmm && cmd.windows(needle.len()).any(|w| w == needle.as_slice()) && alive(pid) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }

    /// SIGKILLs a process this cluster started ("controller" or an agent name).
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// VM service client.
    pub async fn vms(&self) -> VmServiceClient<Authed> {
        VmServiceClient::with_interceptor(self.ctl_channel().await, self.attach())
    }

    /// The interceptor attaching the bootstrap admin's API token.
    pub fn attach(&self) -> AttachToken {
        AttachToken::new(Some(&self.admin_token)).expect("token fits a header")
    }

    /// Host service client.
    pub async fn hosts(&self) -> HostServiceClient<Authed> {
        HostServiceClient::with_interceptor(self.ctl_channel().await, self.attach())
    }

    /// Storage service client.
    pub async fn storage(&self) -> StorageServiceClient<Authed> {
        StorageServiceClient::with_interceptor(self.ctl_channel().await, self.attach())
    }

    /// Waits until `n` hosts are Ready.
    pub async fn wait_ready_hosts(&self, n: usize) {
        let mut h = self.hosts().await;
        wait_for(&format!("{n} ready hosts"), Duration::from_secs(30), || {
            let mut h = h.clone();
            async move {
                let r = h
                    .list_hosts(pb::ListHostsRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                (r.hosts
                    .iter()
                    .filter(|h| h.state == pb::HostState::Ready as i32)
                    .count()
                    >= n)
                    .then_some(())
            }
        })
        .await;
        let _ = h.list_hosts(pb::ListHostsRequest::default()).await;
    }

    /// A VM spec for the cluster's guest.
    pub fn spec(&self, name: &str, memory_mib: i64) -> pb::VmSpec {
        pb::VmSpec {
            name: name.to_string(),
            vcpus: 1,
            memory_mib,
            kernel: self
                .kernel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cmdline: self.cmdline.clone(),
            ..Default::default()
        }
    }

    /// Runs novactl against this cluster's controller; returns (success, stdout, stderr).
    pub fn novactl(&self, args: &[&str]) -> (bool, String, String) {
        let controller = if self.insecure {
            format!("http://{}", self.ctl_addr)
        } else {
            self.ctl_addr.clone()
        };
        let out = Command::new(bin_dir().join("novactl"))
            .args(["--controller", &controller, "--tls-dir"])
            .arg(self.root.join("controller/pki/clients/admin"))
            .arg("--token-file")
            .arg(self.root.join("admin.token"))
            .args(args)
            // Never a login token of whoever runs the tests.
            .env("NOVACRON_CONFIG_DIR", self.root.join("novactl"))
            .env_remove("NOVACRON_TOKEN")
            .env_remove("NOVACRON_TOKEN_FILE")
            .output()
            .expect("run novactl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Kills every process whose command line mentions this cluster's directory (VMMs and
    /// supervisors are detached from the agents, by design).
    fn kill_leftovers(&self) {
        let needle = self.root.as_os_str().as_encoded_bytes().to_vec();
        let me = std::process::id();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

impl Cluster {
    /// Removes the cgroups the cluster's agents made for their VMs (`novacron/<agent-id>` in
    /// each cgroup hierarchy, at its root or below this process's own cgroup there; see
    /// `agent/src/cgroup.rs`) once the killed VMMs are gone, so a failed test leaves no
    /// cgroups behind.
    fn remove_cgroups(&self) {
        let ids: Vec<String> = self
            .agents
            .keys()
            .filter_map(|n| std::fs::read_to_string(self.root.join(n).join("agent-id")).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && !s.contains('/'))
            .collect();
        if ids.is_empty() {
            return;
        }
        let mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let fstype = right.split(' ').next()?;
                (fstype == "cgroup" || fstype == "cgroup2")
                    .then(|| left.split(' ').nth(4).map(PathBuf::from))?
            })
            .collect();
        let own: Vec<String> = std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.splitn(3, ':')
                    .nth(2)
                    .map(|p| p.trim_matches('/').to_string())
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(3);
        for m in &mounts {
            let bases = std::iter::once(m.clone()).chain(own.iter().map(|p| m.join(p)));
            for base in bases {
                let top = base.join("novacron");
                for id in &ids {
                    let agent = top.join(id);
                    let Ok(rd) = std::fs::read_dir(&agent) else {
                        continue;
                    };
                    for vm in rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                        // Busy until the killed VMMs have exited.
                        while std::fs::remove_dir(&vm).is_err() && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    let _ = std::fs::remove_dir(&agent);
                }
                let _ = std::fs::remove_dir(&top);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
        self.kill_leftovers();
        self.remove_cgroups();
        if std::thread::panicking() {
            eprintln!("test cluster kept for inspection: {}", self.root.display());
            for f in ["controller.log", "node-a.log", "node-b.log"] {
                if let Ok(s) = std::fs::read_to_string(self.root.join(f)) {
                    let tail: Vec<&str> = s.lines().rev().take(30).collect();
                    eprintln!("--- {f} (last lines)");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Polls `f` until it yields a value, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gets a VM.
pub async fn get(c: &mut VmServiceClient<Authed>, vm: &str) -> pb::Vm {
    c.get_vm(pb::GetVmRequest { vm: vm.to_string() })
        .await
        .expect("get vm")
        .into_inner()
}

/// All VMs.
pub async fn list(c: &mut VmServiceClient<Authed>) -> Vec<pb::Vm> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_vms(pb::ListVmsRequest {
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        all.extend(r.vms);
        if r.next_page_token.is_empty() {
            return all;
        }
        token = r.next_page_token;
    }
}

/// Waits until the VM's phase is `phase`.
pub async fn wait_phase(
    c: &VmServiceClient<Authed>,
    vm: &str,
    phase: pb::VmPhase,
    timeout: Duration,
) -> pb::Vm {
    wait_for(&format!("vm {vm} {phase:?}"), timeout, || {
        let mut c = c.clone();
        let vm = vm.to_string();
        async move {
            let v = c.get_vm(pb::GetVmRequest { vm }).await.ok()?.into_inner();
            (v.phase == phase as i32).then_some(v)
        }
    })
    .await
}

/// The VM's console log path on its host.
pub fn console(vm: &pb::Vm) -> PathBuf {
    PathBuf::from(
        vm.status
            .as_ref()
            .map(|s| s.console_log.clone())
            .unwrap_or_default(),
    )
}

/// Lines of a console log matching `needle`.
pub fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

/// Waits until the console log has at least `n` lines containing `needle`.
pub async fn wait_console(path: &Path, needle: &str, n: usize, timeout: Duration) {
    let p = path.to_path_buf();
    wait_for(
        &format!("{n} x {needle:?} in {}", p.display()),
        timeout,
        || {
            let p = p.clone();
            async move { (count_lines(&p, needle) >= n).then_some(()) }
        },
    )
    .await
}

/// The VM's directory on its host (where its console log, `launch.json` and API socket
/// are).
pub fn vm_dir(vm: &pb::Vm) -> PathBuf {
    console(vm)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Creates a VM from `spec` and asserts the controller answers it running.
pub async fn create_running(c: &mut VmServiceClient<Authed>, spec: pb::VmSpec) -> pb::Vm {
    let name = spec.name.clone();
    let vm = c
        .create_vm(pb::CreateVmRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
        .into_inner();
    assert_eq!(vm.phase, pb::VmPhase::Running as i32, "{vm:?}");
    vm
}

/// The VMM pid a VM reports.
pub fn pid(vm: &pb::Vm) -> i32 {
    vm.status.as_ref().map(|s| s.pid).unwrap_or(0)
}

/// The VMM pid of a VM that must have one: panics if the VM reports none (pid 0), so that
/// "that process is gone" can never pass for a VM that had no process.
pub fn running_pid(vm: &pb::Vm) -> i32 {
    let p = pid(vm);
    assert!(p > 0, "vm {} reports no VMM pid: {:?}", vm.name, vm.status);
    p
}

/// Whether a pid is alive.
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks existence.
    pid > 0
        && unsafe { libc::kill(pid, 0) } == 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// The agent state of a VM status.
pub fn agent_state(vm: &pb::Vm) -> apb::VmState {
    apb::VmState::try_from(vm.status.as_ref().map(|s| s.state).unwrap_or(0))
        .unwrap_or(apb::VmState::Unspecified)
}

/// How long a guest takes to print its first self-check.
pub fn guest_timeout(vmm: Vmm) -> Duration {
    match vmm {
        Vmm::Real => Duration::from_secs(60),
        Vmm::Fake => Duration::from_secs(10),
    }
}
