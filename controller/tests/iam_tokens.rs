//! Authentication against a real controller: expired, forged, `alg: none`, garbled,
//! revoked, expired-API and wrong-project tokens, tokens of deleted users, and logins with a
//! wrong password or TOTP code (or none, once TOTP is enrolled) all answer UNAUTHENTICATED;
//! the right credentials work, and development mode lets token-less calls act as admin.

// Test code: a failed step panics with its error.
#![allow(clippy::unwrap_used)]

mod iam_support;

use std::time::Duration;

use iam_support::{fixture, session, start, PASSWORD};
use novacron_controller::iam::authn::IamMode;
use novacron_controller::iam::tokens::SigningKey;
use novacron_controller::iam::users;
use novacron_proto::controller as pb;
use tonic::Code;

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

async fn who(srv: &iam_support::Running, token: Option<&str>) -> Result<String, tonic::Status> {
    srv.clients(token)
        .iam
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().user)
}

fn unauthenticated(r: Result<String, tonic::Status>, what: &str) -> String {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}");
    s.message().to_string()
}

#[tokio::test]
async fn bad_session_tokens_are_unauthenticated() {
    let fx = fixture("tokens");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    assert_eq!(
        who(&srv, Some(&session(&fx.dir, "alice", 0, 60)))
            .await
            .unwrap(),
        "alice"
    );
    // Expired (no leeway).
    let m = unauthenticated(
        who(&srv, Some(&session(&fx.dir, "alice", 120, 60))).await,
        "expired",
    );
    assert!(m.contains("expired"), "{m}");
    // Forged: a well-formed token signed with another key.
    let other = SigningKey::from_seed(&[9; 32], fx.dir.join("other"));
    let (forged, _) = other.issue("root", now_s(), 600).unwrap();
    unauthenticated(who(&srv, Some(&forged)).await, "forged");
    // alg: none, and an HMAC token: only EdDSA is accepted.
    let claims = format!(
        r#"{{"sub":"root","iss":"novacron-controller","iat":{},"exp":{},"jti":"x"}}"#,
        now_s(),
        now_s() + 600
    );
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.as_bytes())
    );
    unauthenticated(who(&srv, Some(&none)).await, "alg none");
    let hs = format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64url(claims.as_bytes()),
        b64url(&[0; 32])
    );
    unauthenticated(who(&srv, Some(&hs)).await, "hs256");
    // A valid token with its payload swapped for another user's.
    let good = session(&fx.dir, "victor", 0, 600);
    let parts: Vec<&str> = good.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], b64url(claims.as_bytes()), parts[2]);
    unauthenticated(who(&srv, Some(&swapped)).await, "swapped payload");
    for garbage in ["garbage", "a.b.c", "nct_0011223344556677.00", ""] {
        unauthenticated(who(&srv, Some(garbage)).await, garbage);
    }
    // No token at all, on every user-facing service.
    unauthenticated(who(&srv, None).await, "none");
    let s = srv
        .clients(None)
        .vm
        .list_vms(pb::ListVmsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // A deleted user's token stops working at once.
    let nina = session(&fx.dir, "nina", 0, 600);
    assert_eq!(who(&srv, Some(&nina)).await.unwrap(), "nina");
    let root = session(&fx.dir, "root", 0, 600);
    srv.clients(Some(&root))
        .iam
        .delete_user(pb::DeleteUserRequest {
            name: "nina".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    unauthenticated(who(&srv, Some(&nina)).await, "deleted user");
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}

#[tokio::test]
async fn api_tokens_revoked_expired_and_scoped() {
    let fx = fixture("apitokens");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let alice = session(&fx.dir, "alice", 0, 600);
    let root = session(&fx.dir, "root", 0, 600);
    let mut a = srv.clients(Some(&alice));
    // alice also owns beta; her automation token is for alpha only, as an operator.
    srv.clients(Some(&root))
        .iam
        .add_member(pb::AddMemberRequest {
            project: "beta".into(),
            user: "alice".into(),
            role: pb::Role::Owner as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let t = a
        .iam
        .create_api_token(pb::CreateApiTokenRequest {
            project: "alpha".into(),
            role: pb::Role::Operator as i32,
            description: "ci".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = t.info.unwrap().id;
    let mut bot = srv.clients(Some(&t.token));
    let me = bot
        .iam
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.user.as_str(), me.token_id.as_str()),
        ("alice", id.as_str())
    );
    assert_eq!(me.memberships.len(), 1);
    bot.vm
        .get_vm(pb::GetVmRequest { vm: "a-vm".into() })
        .await
        .unwrap();
    // Naming another project: the token is no credential there.
    for r in [
        bot.vm
            .list_vms(pb::ListVmsRequest {
                project: "beta".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        bot.vm
            .create_vm(pb::CreateVmRequest {
                project: "beta".into(),
                spec: Some(pb::VmSpec {
                    name: "x".into(),
                    vcpus: 1,
                    memory_mib: 64,
                    kernel: "/k".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        bot.iam
            .list_audit(pb::ListAuditRequest {
                project: "beta".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ] {
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("scoped to project alpha"), "{s:?}");
    }
    // Another project's objects stay invisible (alice's own session sees them).
    let s = bot
        .vm
        .get_vm(pb::GetVmRequest { vm: "b-vm".into() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    a.vm.get_vm(pb::GetVmRequest { vm: "b-vm".into() })
        .await
        .unwrap();
    // At most its role: an operator token cannot manage members.
    let s = bot
        .iam
        .add_member(pb::AddMemberRequest {
            project: "alpha".into(),
            user: "nina".into(),
            role: pb::Role::Viewer as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    // Nobody mints a token above their own role.
    let victor = session(&fx.dir, "victor", 0, 600);
    let s = srv
        .clients(Some(&victor))
        .iam
        .create_api_token(pb::CreateApiTokenRequest {
            project: "alpha".into(),
            role: pb::Role::Owner as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    // An automation token cannot replace its user's second factor.
    let s = bot
        .iam
        .enroll_totp(pb::EnrollTotpRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    // Revoked: refused from then on.
    a.iam
        .revoke_api_token(pb::RevokeApiTokenRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = unauthenticated(who(&srv, Some(&t.token)).await, "revoked");
    assert!(m.contains("revoked"), "{m}");
    // Expired.
    let short = a
        .iam
        .create_api_token(pb::CreateApiTokenRequest {
            project: "alpha".into(),
            role: pb::Role::Viewer as i32,
            ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who(&srv, Some(&short.token)).await.unwrap(), "alice");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = unauthenticated(who(&srv, Some(&short.token)).await, "expired api token");
    assert!(m.contains("expired"), "{m}");
    // A token's secret is checked, not just its id.
    let (fid, _) = &fx.api_tokens["bob"];
    let fake = format!("nct_{fid}.{}", "ab".repeat(32));
    unauthenticated(who(&srv, Some(&fake)).await, "wrong secret");
    assert_eq!(
        who(&srv, Some(&fx.api_tokens["bob"].1)).await.unwrap(),
        "bob"
    );
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}

#[tokio::test]
async fn login_with_password_and_totp() {
    let fx = fixture("login");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let mut anon = srv.clients(None);
    let login = |user: &str, password: &str, code: &str| pb::LoginRequest {
        user: user.into(),
        password: password.into(),
        totp_code: code.into(),
    };
    // Password only, no TOTP enrolled: a session token.
    let t = anon
        .iam
        .login(login("victor", PASSWORD, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(t.expires_at_ms > 0);
    assert_eq!(who(&srv, Some(&t.token)).await.unwrap(), "victor");
    for (u, p) in [("victor", "wrong password"), ("nobody", PASSWORD)] {
        let s = anon.iam.login(login(u, p, "")).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{u}");
        assert_eq!(s.message(), "invalid user name or password");
    }
    // Enrol TOTP: a wrong confirmation code changes nothing.
    let mut v = srv.clients(Some(&t.token));
    let e = v
        .iam
        .enroll_totp(pb::EnrollTotpRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(e
        .otpauth_url
        .starts_with("otpauth://totp/NovaCron:victor?secret="));
    let secret = users::get(srv.ctl.iam().store(), "victor")
        .unwrap()
        .unwrap()
        .totp_pending;
    assert_eq!(users::base32(&secret), e.secret);
    let s = v
        .iam
        .confirm_totp(pb::ConfirmTotpRequest {
            code: "000000".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let code = |at: u64| users::totp_code(&secret, at).unwrap();
    let u = v
        .iam
        .confirm_totp(pb::ConfirmTotpRequest {
            code: code(now_s()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.totp_enabled);
    // Now the password alone is not enough, and the answer says a code is needed.
    let s = anon
        .iam
        .login(login("victor", PASSWORD, ""))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    assert_eq!(s.metadata().get("novacron-totp").unwrap(), "required");
    // A wrong code, a code of another secret, a right code with a wrong password.
    let wrong = if code(now_s()) == "123456" {
        "654321"
    } else {
        "123456"
    };
    for (p, c) in [
        (PASSWORD, wrong.to_string()),
        (
            PASSWORD,
            users::totp_code(b"another secret, 20 b", now_s()).unwrap(),
        ),
        ("wrong password", code(now_s() + 30)),
    ] {
        let s = anon.iam.login(login("victor", p, &c)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{p} {c}");
    }
    // The next step's code logs in (one step of skew) and is single-use.
    let next = code(now_s() + 30);
    anon.iam
        .login(login("victor", PASSWORD, &next))
        .await
        .unwrap();
    let s = anon
        .iam
        .login(login("victor", PASSWORD, &next))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "replayed code");
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}

#[tokio::test]
async fn repeated_failed_logins_must_wait_before_the_next_attempt_is_checked() {
    let fx = fixture("throttle");
    let srv = start(&fx.dir, IamMode::Enforce).await;
    let mut anon = srv.clients(None);
    let login = |user: &str, password: &str| pb::LoginRequest {
        user: user.into(),
        password: password.into(),
        totp_code: String::new(),
    };
    for i in 0..5 {
        let s = anon.iam.login(login("victor", "guess")).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "attempt {i}");
    }
    // Now even the right password is not checked until the wait is over.
    let s = anon.iam.login(login("victor", PASSWORD)).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message()
            .starts_with("too many failed logins for user victor: try again in"),
        "{}",
        s.message()
    );
    // Another user name is not affected (and an unknown one fails as usual).
    let s = anon.iam.login(login("nobody", "x")).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // After the wait (1 s after the fifth failure) the right password logs in, and that
    // clears the record.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    anon.iam
        .login(login("victor", PASSWORD))
        .await
        .expect("login after the wait");
    let s = anon.iam.login(login("victor", "guess")).await.unwrap_err();
    assert_eq!(
        s.code(),
        Code::Unauthenticated,
        "a fresh record after success"
    );
    anon.iam
        .login(login("victor", PASSWORD))
        .await
        .expect("no wait after a single failure");
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}

#[tokio::test]
async fn development_mode_lets_tokenless_calls_act_as_admin() {
    let fx = fixture("devmode");
    let srv = start(&fx.dir, IamMode::InsecureDev).await;
    assert_eq!(who(&srv, None).await.unwrap(), "insecure-dev");
    let hosts = srv
        .clients(None)
        .host
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hosts.total, 1);
    // A token that is sent is still checked.
    unauthenticated(who(&srv, Some("garbage")).await, "garbage in dev mode");
    assert_eq!(
        who(&srv, Some(&session(&fx.dir, "victor", 0, 60)))
            .await
            .unwrap(),
        "victor"
    );
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&fx.dir);
}
