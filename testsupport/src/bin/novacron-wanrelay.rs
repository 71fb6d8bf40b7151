//! `novacron-wanrelay`: a userspace TCP relay that emulates a WAN link (rate, delay,
//! corruption), for tests and benchmarks on hosts that have `tc tbf` but no `netem`. The
//! link model is described in `novacron_testsupport::wanrelay`.
//!
//! ```text
//! novacron-wanrelay --listen 127.0.0.1:0 --to 127.0.0.1:7000 --rtt-ms 40 --rate 100mbit
//! ```
//!
//! When ready it prints one line `LISTENING <addr>` on stdout (with the real port when
//! `--listen` used port 0). It exits when its stdin reaches end-of-file (unless
//! `--ignore-stdin`) or on SIGTERM.

use std::io::{self, BufRead as _, Write};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::Parser;
use novacron_testsupport::wanrelay::{LinkConfig, Relay};
use novacron_vmm_api::units::parse_rate;

/// Command line of the relay.
#[derive(Parser, Debug)]
#[command(
    name = "novacron-wanrelay",
    about = "TCP relay emulating a WAN link (rate, delay, corruption) for tests and benchmarks"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:0 (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,

    /// Address every accepted connection is relayed to.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,

    /// Added round-trip time in milliseconds: each direction delays data by half of it.
    #[arg(
        long = "rtt-ms",
        visible_alias = "delay-ms",
        value_name = "N",
        default_value_t = 0
    )]
    rtt_ms: u64,

    /// Link capacity per direction, shared by all connections, in bytes per second (10M,
    /// 10MB and 10MiB/s all mean 10 MiB/s; binary units) or bits per second (100mbit,
    /// 500kbit; decimal). Unlimited if not given.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    rate: Option<u64>,

    /// XOR 0xFF into byte N (0-based) of each connection's client-to-server stream.
    #[arg(long, value_name = "N")]
    flip_byte_at: Option<u64>,

    /// Maximum simultaneously relayed connections; further connections are closed at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_conns: usize,

    /// Keep running when stdin reaches end-of-file (for manual use in the background).
    #[arg(long)]
    ignore_stdin: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = LinkConfig {
        rtt: Duration::from_millis(args.rtt_ms),
        rate: args.rate,
        flip_byte_at: args.flip_byte_at,
        max_conns: args.max_conns,
    };
    let relay = match Relay::bind(&args.listen, &args.to, &cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("novacron-wanrelay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match relay.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("novacron-wanrelay: {e}");
            return ExitCode::FAILURE;
        }
    };

    if !args.ignore_stdin {
        let spawned = thread::Builder::new().name("stdin-watch".into()).spawn(|| {
            let mut stdin = io::stdin().lock();
            loop {
                match stdin.fill_buf() {
                    Ok([]) | Err(_) => std::process::exit(0),
                    Ok(b) => {
                        let n = b.len();
                        stdin.consume(n);
                    }
                }
            }
        });
        if let Err(e) = spawned {
            eprintln!("novacron-wanrelay: cannot watch stdin: {e}");
            return ExitCode::FAILURE;
        }
    }

    {
        let mut out = io::stdout().lock();
        if writeln!(out, "LISTENING {addr}")
            .and_then(|_| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    relay.serve();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_flag_takes_the_shared_units() {
        let a =
            Args::try_parse_from(["r", "--listen", "x", "--to", "y", "--rate", "10MB"]).unwrap();
        assert_eq!(a.rate, Some(10 << 20), "10MB means 10 MiB/s");
        let a =
            Args::try_parse_from(["r", "--listen", "x", "--to", "y", "--rate", "100mbit"]).unwrap();
        assert_eq!(a.rate, Some(12_500_000));
        assert!(
            Args::try_parse_from(["r", "--listen", "x", "--to", "y", "--rate", "10mbps"]).is_err()
        );
    }
}
