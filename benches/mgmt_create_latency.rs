//! Create-to-running latency through the whole stack: a gRPC `CreateVm` to a real
//! `novacron-controller`, which validates, schedules, persists (fsync) and asks a real
//! `novacron-agent`, which prepares the VM directory and starts a supervised `novacron-vmm`
//! and waits for its control API; `CreateVm` answers once the VMM runs. Also measured: until
//! the guest prints `READY` on its console, `DeleteVm`, and a new connection plus one call
//! (what each novactl run pays). Each row is measured twice: secured (mutual TLS and the API
//! token: the default) and with `--insecure-dev` (plaintext gRPC, the token still checked),
//! so the difference is what TLS costs (`MGMT_BENCH_TLS=on|off` runs one of them).
//!
//! `cargo bench --bench mgmt_create_latency` (real VMM and test guest; MGMT_BENCH_VMM=fake
//! for the contract stand-in, MGMT_BENCH_N for the number of VMs). Without `--bench` (as
//! under `cargo test --benches`) it runs a short smoke pass with the stand-in.

use std::time::{Duration, Instant};

use novacron_proto::controller as pb;
use novacron_testsupport::mgmt::{console, count_lines, Cluster, Vmm};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<28} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        name,
        v.len(),
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(*v.last().unwrap_or(&Duration::ZERO)),
        ms(mean)
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let vmm = match std::env::var("MGMT_BENCH_VMM").as_deref() {
        Ok("fake") => Vmm::Fake,
        Ok("real") => Vmm::Real,
        _ if full => Vmm::Real,
        _ => Vmm::Fake,
    };
    let n: usize = std::env::var("MGMT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 30 } else { 3 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Secured (mutual TLS, token checked: the default) and `--insecure-dev` (plaintext, the
    // same token checked), alternating, so the difference is what TLS costs.
    let variants: Vec<bool> = match std::env::var("MGMT_BENCH_TLS").as_deref() {
        Ok("on") => vec![false],
        Ok("off") => vec![true],
        _ => vec![false, true],
    };
    for insecure in variants {
        rt.block_on(one_variant(vmm, n, insecure));
    }
}

async fn one_variant(vmm: Vmm, n: usize, insecure: bool) {
    {
        let mut cl = Cluster::new(if insecure { "bench-plain" } else { "bench-tls" }, vmm, &[]);
        cl.insecure = insecure;
        if vmm == Vmm::Real {
            cl.cmdline = "workload=idle hz=10 report_ms=0".into();
        }
        cl.start_controller();
        cl.start_agent("node-a", "127.0.0.2", &[]);
        cl.wait_ready_hosts(1).await;
        let mut c = cl.vms().await;
        let (mut create, mut ready, mut delete) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let spec = cl.spec(&format!("bench-{i}"), 32);
            let t0 = Instant::now();
            let vm = c
                .create_vm(pb::CreateVmRequest {
                    spec: Some(spec),
                    ..Default::default()
                })
                .await
                .expect("create")
                .into_inner();
            create.push(t0.elapsed());
            assert_eq!(vm.phase, pb::VmPhase::Running as i32);
            let log = console(&vm);
            let deadline = Instant::now() + Duration::from_secs(60);
            while count_lines(&log, "READY") == 0 {
                assert!(Instant::now() < deadline, "no READY from {}", vm.name);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ready.push(t0.elapsed());
            let t1 = Instant::now();
            c.delete_vm(pb::VmActionRequest {
                vm: vm.name.clone(),
                ..Default::default()
            })
            .await
            .expect("delete");
            delete.push(t1.elapsed());
        }
        println!(
            "create-to-running through controller -> agent -> {} ({} VMs, one at a time, 32 MiB), \
             gRPC {}",
            if vmm == Vmm::Real {
                "novacron-vmm + test guest"
            } else {
                "fake_vmm"
            },
            n,
            if insecure {
                "plaintext (--insecure-dev)"
            } else {
                "mutual TLS + token"
            }
        );
        println!(
            "{:<28} {:>5} {:>9} {:>9} {:>9} {:>9}",
            "step", "n", "p50 ms", "p99 ms", "max ms", "mean ms"
        );
        row("CreateVm (vmm running)", create);
        row("create to guest READY", ready);
        row("DeleteVm", delete);
        // What a one-shot client (novactl) pays: a new connection (TLS handshake) + one call.
        let mut connect = Vec::new();
        for _ in 0..n {
            let t0 = Instant::now();
            let mut c = cl.vms().await;
            c.list_vms(pb::ListVmsRequest::default())
                .await
                .expect("list");
            connect.push(t0.elapsed());
        }
        row("connect + ListVms", connect);
    }
}
