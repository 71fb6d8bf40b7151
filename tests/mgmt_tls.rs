//! Mutual TLS of the management plane against real processes: the controller and an agent
//! complete handshakes only with certificates of the cluster's CA, serve only the identities
//! each service admits, verify each other's names, and agents obtain certificates with
//! one-time join tokens. Neither refuses to start insecurely without saying so.

use std::process::Command;
use std::time::Duration;

use novacron_proto::agent as apb;
use novacron_proto::agent::agent_client::AgentClient;
use novacron_proto::agent::agent_peer_client::AgentPeerClient;
use novacron_proto::auth::AttachToken;
use novacron_proto::controller as pb;
use novacron_proto::controller::registry_client::RegistryClient;
use novacron_proto::controller::vm_service_client::VmServiceClient;
use novacron_security::pki::CONTROLLER_DNS_NAME;
use novacron_security::{tls, CertAuthority, Identity, TlsMaterial};
use novacron_testsupport::mgmt::*;
use novacron_testsupport::paths::bin_dir;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

/// One attempt at a channel to `addr` with `cfg` (no TLS when none).
async fn channel(addr: &str, cfg: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if cfg.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(c) = cfg {
        ep = ep.tls_config(c).unwrap();
    }
    ep.connect().await.map_err(|e| format!("{e:?}"))
}

/// Lists VMs on the controller through `cfg` with the admin's token: Err when the handshake
/// or the call fails.
async fn list_vms(addr: &str, cfg: Option<ClientTlsConfig>, token: &str) -> Result<(), String> {
    let ch = channel(addr, cfg).await?;
    VmServiceClient::with_interceptor(ch, AttachToken::new(Some(token)).unwrap())
        .list_vms(pb::ListVmsRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Calls GetHostInfo on an agent through `cfg`: the status code when refused.
async fn host_info(addr: &str, cfg: Option<ClientTlsConfig>) -> Result<(), String> {
    let ch = channel(addr, cfg).await?;
    AgentClient::new(ch)
        .get_host_info(apb::GetHostInfoRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn material(ca: &CertAuthority, who: &Identity) -> TlsMaterial {
    TlsMaterial::new(ca.cert_pem(), &ca.issue(who, &[]).unwrap())
}

#[test]
fn handshakes_need_a_certificate_of_the_ca_and_services_check_identities() {
    run_scenario(Duration::from_secs(120), async {
        let mut c = Cluster::new("tls", Vmm::Fake, &[]);
        c.start_controller();
        c.start_agent("node-a", "127.0.0.2", &[]);
        c.wait_ready_hosts(1).await;
        let ctl = c.ctl_addr.clone();
        let agent = c.agent_addr("node-a");
        let ca_pem = c.client_tls.ca_pem.clone();

        // The right certificates work.
        let good = tls::mutual_client(&c.client_tls, CONTROLLER_DNS_NAME);
        list_vms(&ctl, Some(good), &c.admin_token)
            .await
            .expect("operator certificate");
        let as_controller = tls::mutual_client(&c.controller_tls, "node-a");
        host_info(&agent, Some(as_controller))
            .await
            .expect("controller certificate");

        // Plain HTTP/2, no client certificate, and a certificate of another CA: no handshake.
        let other = CertAuthority::generate("someone else's CA").unwrap();
        let foreign = material(&other, &Identity::Client("admin".into()));
        let foreign_ctl = material(&other, &Identity::Controller);
        for (what, addr, name) in [
            ("controller", &ctl, CONTROLLER_DNS_NAME),
            ("agent", &agent, "node-a"),
        ] {
            let call = |cfg| async {
                if what == "controller" {
                    list_vms(addr, cfg, &c.admin_token).await
                } else {
                    host_info(addr, cfg).await
                }
            };
            assert!(call(None).await.is_err(), "{what}: plaintext was served");
            let anon = tls::anonymous_client(&ca_pem, name);
            assert!(
                call(Some(anon)).await.is_err(),
                "{what}: no client certificate was served"
            );
            let m = if what == "controller" {
                &foreign
            } else {
                &foreign_ctl
            };
            // Trusting our CA (so the server is accepted) but presenting a foreign certificate.
            let mut m = m.clone();
            m.ca_pem = ca_pem.clone();
            let e = call(Some(tls::mutual_client(&m, name))).await;
            assert!(e.is_err(), "{what}: a foreign CA's certificate was served");
        }

        // A server whose certificate names another host is not accepted.
        let wrong_name = tls::mutual_client(&c.controller_tls, "node-b");
        assert!(host_info(&agent, Some(wrong_name)).await.is_err());
        let imposter = tls::mutual_client(&c.client_tls, "node-a");
        assert!(
            list_vms(&ctl, Some(imposter), &c.admin_token)
                .await
                .is_err(),
            "controller accepted as node-a"
        );

        // Our CA, wrong identity: the agent serves the controller only (peers only disk
        // exports); a host reports only for itself.
        let ca = novacron_controller::certs::load_ca(&c.root.join("controller/pki"))
            .unwrap()
            .unwrap();
        let node_b = material(&ca, &Identity::Host("node-b".into()));
        for m in [&c.client_tls, &node_b] {
            let e = host_info(&agent, Some(tls::mutual_client(m, "node-a"))).await;
            let e = e.unwrap_err();
            assert!(e.starts_with("PermissionDenied"), "{e}");
        }
        let ch = channel(&agent, Some(tls::mutual_client(&c.client_tls, "node-a")))
            .await
            .unwrap();
        let e = AgentPeerClient::new(ch)
            .export_disk(apb::ExportDiskRequest {
                vm_id: "x".into(),
                index: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let ch = channel(&agent, Some(tls::mutual_client(&node_b, "node-a")))
            .await
            .unwrap();
        let e = AgentPeerClient::new(ch)
            .export_disk(apb::ExportDiskRequest {
                vm_id: "no-such-vm".into(),
                index: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "a peer host may export: {e:?}");

        let hb = |name: &str| pb::HeartbeatRequest {
            name: name.into(),
            ..Default::default()
        };
        let mut reg = RegistryClient::new(
            channel(&ctl, Some(tls::mutual_client(&node_b, CONTROLLER_DNS_NAME)))
                .await
                .unwrap(),
        );
        let e = reg.heartbeat(hb("node-a")).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        reg.heartbeat(hb("node-b"))
            .await
            .expect("a host reports for itself");
        let mut reg = RegistryClient::new(c.ctl_channel().await);
        let e = reg.heartbeat(hb("node-a")).await.unwrap_err();
        assert_eq!(
            e.code(),
            Code::PermissionDenied,
            "a client reported for a host: {e:?}"
        );
    });
}

fn agent_join(c: &Cluster, token: &str, name: &str) -> std::process::Output {
    Command::new(bin_dir().join("novacron-agent"))
        .args([
            "join",
            "--token",
            token,
            "--controller-join",
            &c.join_addr,
            "--data-dir",
        ])
        .arg(c.root.join(name))
        .output()
        .unwrap()
}

#[test]
fn agents_join_with_one_time_tokens() {
    run_scenario(Duration::from_secs(120), async {
        let mut c = Cluster::new("tlsjoin", Vmm::Fake, &[]);
        let data = c.root.join("controller");
        let token = |host: &str, ttl: &str| {
            controller_command(&[
                "certs".as_ref(),
                "join-token".as_ref(),
                "--data-dir".as_ref(),
                data.as_os_str(),
                "--host".as_ref(),
                host.as_ref(),
                "--ttl-s".as_ref(),
                ttl.as_ref(),
            ])
            .trim()
            .to_string()
        };
        let t = token("node-j", "600");
        c.start_controller();
        let out = wait_for("the join endpoint", Duration::from_secs(20), || {
            let out = agent_join(&c, &t, "node-j");
            async move { out.status.success().then_some(out) }
        })
        .await;
        assert!(String::from_utf8_lossy(&out.stdout).contains("joined as host node-j"));
        // The agent takes its name from the certificate and registers with it.
        c.start_agent("node-j", "127.0.0.2", &[]);
        c.wait_ready_hosts(1).await;

        // Used once; expired; forged: refused, and nothing is written.
        for (bad, why) in [
            (t.clone(), "reused"),
            (token("node-k", "0"), "expired"),
            (format!("{}x", &t[..t.len() - 1]), "forged"),
        ] {
            if why == "expired" {
                std::thread::sleep(Duration::from_millis(1100));
            }
            let out = agent_join(&c, &bad, "node-x");
            assert!(!out.status.success(), "{why} token accepted");
            assert!(!c.root.join("node-x/tls/cert.pem").exists(), "{why}");
        }
        // A certificate for one host cannot run as another.
        let st = Command::new(bin_dir().join("novacron-agent"))
            .args(["--name", "node-other", "--data-dir"])
            .arg(c.root.join("node-j"))
            .args(["--listen", "127.0.0.2:1"])
            .output()
            .unwrap();
        assert_eq!(st.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&st.stderr).contains("certificate is for host node-j"));
    });
}

#[test]
fn no_insecure_start_without_the_development_flag() {
    let _serial = serial();
    ensure_binaries(Vmm::Fake);
    let dir = std::env::temp_dir().join(format!("nc-insecure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(bin_dir().join("novacron-controller"))
        .arg("--data-dir")
        .arg(dir.join("ctl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certs init"));
    let out = Command::new(bin_dir().join("novacron-agent"))
        .arg("--data-dir")
        .arg(dir.join("agent"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("novacron-agent join"));
    // With the flag it starts, and says what it gives up.
    let port = novacron_testsupport::net::free_port("127.0.0.1");
    let mut child = Command::new(bin_dir().join("novacron-controller"))
        .args([
            "--insecure-dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("ctl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the development controller exited"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING: --insecure-dev"));
    let _ = std::fs::remove_dir_all(&dir);
}
