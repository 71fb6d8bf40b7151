//! novactl's identity verbs against a real controller: `login` (password, then the TOTP
//! code it prompts for) stores a 0600 token that later commands use; `--token-file` and
//! `NOVACRON_TOKEN` take precedence; projects, members, quotas, API tokens and the audit log
//! from the command line.

// Test code: a failed step panics with its error.
#![allow(clippy::unwrap_used)]

mod iam_support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use iam_support::{fixture, start, PASSWORD};
use novacron_controller::iam::authn::IamMode;
use novacron_controller::iam::users;

/// Runs novactl with `config` as its config dir, `stdin` on its standard input; returns
/// (success, stdout, stderr).
fn novactl(
    addr: &str,
    config: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    // These controllers serve without TLS (identity and access is what is tested here;
    // tests/mgmt_tls.rs proves the transport).
    let mut child = Command::new(env!("CARGO_BIN_EXE_novactl"))
        .args(["--controller", &format!("http://{addr}")])
        .args(args)
        .env("NOVACRON_CONFIG_DIR", config)
        .env_remove("NOVACRON_TOKEN")
        .env_remove("NOVACRON_TOKEN_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn base32_decode(s: &str) -> Vec<u8> {
    let (mut buf, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {s}"),
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_projects_tokens_and_audit_from_the_command_line() {
    let fx = fixture("novactl");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let addr = srv.addr.to_string();
    let config = fx.dir.join("novactl-config");
    let pw = fx.dir.join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let pw = pw.to_str().unwrap();
    let run = |env: &[(&str, &str)], args: &[&str], stdin: &str| {
        let r = novactl(&addr, &config, env, args, stdin);
        (r.0, r.1, r.2)
    };
    let ok = |args: &[&str]| {
        let (ok, out, err) = run(&[], args, "");
        assert!(ok, "novactl {args:?}: {err}");
        out
    };

    // Without a token: refused.
    let (good, _, err) = run(&[], &["vm", "list"], "");
    assert!(!good && err.contains("UNAUTHENTICATED"), "{err}");
    // Log in as the admin: the token is kept, 0600, and used.
    let out = ok(&["login", "--user", "root", "--password-file", pw]);
    assert!(out.contains("logged in as root"), "{out}");
    let mode = std::fs::metadata(config.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(ok(&["whoami"]).starts_with("root, admin"));
    ok(&[
        "project",
        "create",
        "gamma",
        "--max-vms",
        "2",
        "--max-memory",
        "1G",
    ]);
    ok(&[
        "project",
        "add-member",
        "gamma",
        "victor",
        "--role",
        "operator",
    ]);
    let members = ok(&["project", "members", "gamma"]);
    assert!(
        members.contains("victor") && members.contains("operator"),
        "{members}"
    );
    let quota = ok(&["project", "quota", "gamma", "-o", "json"]);
    let q: serde_json::Value = serde_json::from_str(&quota).unwrap();
    assert_eq!(q["quota"]["max_vms"], 2);
    assert_eq!(q["quota"]["max_memory_bytes"], 1u64 << 30);
    ok(&["project", "quota", "gamma", "--max-vcpus", "4"]);
    let q: serde_json::Value =
        serde_json::from_str(&ok(&["project", "quota", "gamma", "-o", "json"])).unwrap();
    assert_eq!(
        (
            q["quota"]["max_vms"].as_u64(),
            q["quota"]["max_vcpus"].as_u64()
        ),
        (Some(2), Some(4))
    );
    let vms = ok(&["vm", "list", "--project", "beta", "-o", "json"]);
    assert!(vms.contains("b-vm"), "{vms}");

    // victor enrols TOTP, then login asks for the code on standard input.
    let vconfig = fx.dir.join("victor-config");
    let vrun = |args: &[&str], stdin: &str| novactl(&addr, &vconfig, &[], args, stdin);
    let (good, _, err) = vrun(&["login", "-u", "victor", "--password-file", pw], "");
    assert!(good, "{err}");
    let code_now = |secret: &[u8]| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        users::totp_code(secret, now).unwrap()
    };
    // The enrolment prints the secret, then reads the code from standard input: the test
    // answers like an authenticator would.
    let mut child = Command::new(env!("CARGO_BIN_EXE_novactl"))
        .args([
            "--controller",
            &format!("http://{addr}"),
            "user",
            "totp-enroll",
        ])
        .env("NOVACRON_CONFIG_DIR", &vconfig)
        .env_remove("NOVACRON_TOKEN")
        .env_remove("NOVACRON_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let b32 = line
        .trim()
        .strip_prefix("secret:")
        .unwrap()
        .trim()
        .to_string();
    let secret = base32_decode(&b32);
    assert_eq!(users::base32(&secret), b32);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", code_now(&secret)).unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    assert!(
        rest.contains("otpauth://totp/NovaCron:victor?secret="),
        "{rest}"
    );
    assert!(rest.contains("TOTP enabled for victor"), "{rest}");
    // The code just used for confirming cannot log in again; wait for the next step's.
    let (good, _, err) = vrun(&["login", "-u", "victor", "--password-file", pw], "\n");
    assert!(!good && err.contains("TOTP"), "{err}");
    let next = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        users::totp_code(&secret, now + 30).unwrap()
    };
    let (good, out, err) = vrun(
        &["login", "-u", "victor", "--password-file", pw],
        &format!("{next}\n"),
    );
    assert!(good, "{out} {err}");
    assert!(err.contains("TOTP code:"), "{err}");

    // victor (operator in gamma and viewer in alpha) mints an automation token for gamma.
    let (good, out, err) = vrun(
        &[
            "--project",
            "gamma",
            "token",
            "create",
            "--role",
            "operator",
            "-o",
            "json",
        ],
        "",
    );
    assert!(good, "{err}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = t["token"].as_str().unwrap().to_string();
    let id = t["id"].as_str().unwrap().to_string();
    // NOVACRON_TOKEN is used before the stored login token, --token-file before both.
    let (good, out, _) = run(&[("NOVACRON_TOKEN", &token)], &["whoami"], "");
    assert!(
        good && out.contains(&format!("victor (API token {id})")),
        "{out}"
    );
    let tf = fx.dir.join("bob-token");
    std::fs::write(&tf, &fx.api_tokens["bob"].1).unwrap();
    let (good, out, _) = run(
        &[("NOVACRON_TOKEN", &token)],
        &["whoami", "--token-file", tf.to_str().unwrap()],
        "",
    );
    assert!(good && out.starts_with("bob"), "{out}");
    let tokens = ok(&["token", "list", "--user", "victor"]);
    assert!(tokens.contains(&id), "{tokens}");
    ok(&["token", "revoke", &id]);
    let (good, _, err) = run(&[("NOVACRON_TOKEN", &token)], &["whoami"], "");
    assert!(!good && err.contains("revoked"), "{err}");

    // The audit log from the command line: by project, since an age or a time.
    let audit = ok(&["audit", "--project", "gamma", "--since", "1h", "-o", "json"]);
    let recs: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let methods: Vec<&str> = recs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert!(methods.contains(&"IamService/CreateProject"), "{methods:?}");
    assert!(methods.contains(&"IamService/AddMember"), "{methods:?}");
    assert!(methods.contains(&"IamService/SetQuota"), "{methods:?}");
    assert!(
        methods.contains(&"IamService/RevokeApiToken"),
        "{methods:?}"
    );
    let later = ok(&["audit", "--since", "2999-01-01T00:00:00Z", "-o", "json"]);
    assert_eq!(later.trim(), "[]");
    ok(&["logout"]);
    assert!(!config.join("token").exists());
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}

/// `novacron-controller bootstrap-admin` creates the first admin (with TOTP on request) and
/// refuses when an admin exists; the admin can then log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_admin_on_the_controller_host() {
    let dir = iam_support::scratch("bootstrap");
    let bin = env!("CARGO_BIN_EXE_novacron-controller");
    let token_file = dir.join("admin-token");
    let boot = |user: &str, totp: bool| {
        let mut c = Command::new(bin);
        c.args([
            "bootstrap-admin",
            "--data-dir",
            dir.to_str().unwrap(),
            "--user",
            user,
        ]);
        if totp {
            c.arg("--totp");
            c.arg("--api-token-file").arg(&token_file);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (good, out, err) = boot("admin", true);
    assert!(good, "{err}");
    assert!(
        out.contains("admin admin created") && out.contains("otpauth://totp/NovaCron:admin"),
        "{out}"
    );
    let (good, _, err) = boot("second", false);
    assert!(!good && err.contains("an admin exists already"), "{err}");
    let srv = start(&dir, IamMode::Enforce).await;
    let rec = users::get(srv.ctl.iam().store(), "admin").unwrap().unwrap();
    assert!(rec.admin() && !rec.totp_secret.is_empty());
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = dir.join("cfg");
    let (good, out, err) = novactl(
        &srv.addr.to_string(),
        &config,
        &[],
        &["whoami", "--token-file", token_file.to_str().unwrap()],
        "",
    );
    assert!(
        good && out.starts_with("admin, admin (API token "),
        "{out} {err}"
    );
    let pw = dir.join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let (good, _, err) = novactl(
        &srv.addr.to_string(),
        &config,
        &[],
        &[
            "login",
            "-u",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        "",
    );
    assert!(!good && err.contains("TOTP"), "password alone: {err}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = users::totp_code(&rec.totp_secret, now).unwrap();
    let (good, _, err) = novactl(
        &srv.addr.to_string(),
        &config,
        &[],
        &[
            "login",
            "-u",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
            "--totp",
            &code,
        ],
        "",
    );
    assert!(good, "{err}");
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
