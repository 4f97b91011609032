//! `stm32boot relay`: share a local serial port with remote stm32boot clients that prove a
//! pre-shared key.

use super::output::Bars;
use super::run::Outcome;
use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use stm32boot::ops::{Note, Progress};
use stm32boot::relay::{auth, Key, Limits, Relay, RelayConfig, RelayEndpoint, DEFAULT_LISTEN};

/// Options of `stm32boot relay`.
#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// The local serial port to share (/dev/ttyUSB0, or a pseudo-terminal). It is opened
    /// exclusively: no other local program can open it while the relay runs.
    #[arg(long, short)]
    pub port: String,

    /// The baud rate the port starts at (8N1); clients set their own line settings.
    #[arg(long, short, default_value_t = 115_200)]
    pub baud: u32,

    /// Listen for clients on this address. The default is loopback only; any other address
    /// (0.0.0.0:7000 for every interface) must be given explicitly. Clients use
    /// --port relay://HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, conflicts_with = "connect")]
    pub listen: String,

    /// Instead of listening, dial out to a client waiting with --port
    /// relay-listen://HOST:PORT (for a gateway behind NAT); dial again after each session.
    /// To dial through a local AT modem instead of the network, give
    /// 'modem:/dev/ttyUSB2?profile=telit&apn=internet&host=HOST&port=PORT' (the options of a
    /// modem: port; host= and port= are where the client waits). The modem dials for each
    /// session and hangs up after it; NO CARRIER ends the session.
    #[arg(long, value_name = "HOST:PORT|modem:…")]
    pub connect: Option<String>,

    /// File holding the pre-shared key (at least 16 bytes, e.g. from `openssl rand -hex 32`;
    /// readable only by you). Without it the key is taken from $STM32BOOT_RELAY_KEY. The key
    /// itself is never an argument.
    #[arg(long, value_name = "PATH", env = "STM32BOOT_RELAY_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Exit after the first client session.
    #[arg(long)]
    pub once: bool,

    /// How long a client has to complete the handshake.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub handshake_timeout: Duration,

    /// How long a peer that failed to authenticate is refused; doubled for each further
    /// failure, up to 10 minutes.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub auth_backoff: Duration,
}

/// Print the address clients use as the first line of stdout, at once.
fn announce(address: &str) {
    use std::io::Write as _;
    println!("{address}");
    std::io::stdout().flush().ok();
}

fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Run the relay until Ctrl-C (or, with --once, until the first session ends).
pub fn run(args: &RelayArgs, bars: &mut Bars) -> Result<Outcome> {
    let endpoint = match &args.connect {
        Some(target) => RelayEndpoint::Connect(target.clone()),
        None => RelayEndpoint::Listen(args.listen.clone()),
    };
    // A modem: target is checked before the key is read or anything is opened.
    endpoint.modem()?;
    let key = match &args.key_file {
        Some(path) => Key::from_file(path)?,
        None => Key::from_env()?.ok_or_else(|| {
            anyhow!(stm32boot::Error::InvalidRequest(format!(
                "no relay key: pass --key-file PATH (a file readable only by you, holding at \
                 least 16 bytes, e.g. from `openssl rand -hex 32`), or set {} or {}",
                auth::KEY_FILE_ENV,
                auth::KEY_ENV
            )))
        })?,
    };
    let config = RelayConfig {
        port: args.port.clone(),
        baud: args.baud,
        endpoint: endpoint.clone(),
        key,
        once: args.once,
        handshake_timeout: args.handshake_timeout,
        limits: Limits {
            backoff_base: args.auth_backoff,
            ..Limits::default()
        },
    };
    let relay = Relay::open(config)?;
    let url = relay.url();
    announce(&url);
    let stop = relay.stop_handle();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.stop()).context("installing the signal handler")?;
    }
    match &endpoint {
        RelayEndpoint::Listen(addr) => {
            if !is_loopback(addr) {
                bars.note(Note::Warning(format!(
                    "listening on {addr}, reachable from other machines: clients must prove the \
                     key, but the traffic after that is not encrypted; on an untrusted network \
                     add a VPN or an SSH tunnel"
                )));
            }
            bars.note(Note::Info(format!(
                "sharing {} on {url} (one client at a time, each must prove the key); stop with \
                 Ctrl-C",
                args.port
            )));
        }
        RelayEndpoint::Connect(_) => bars.note(Note::Info(format!(
            "sharing {} by dialling out to {} (the client waits with --port {url}); stop with \
             Ctrl-C",
            args.port,
            endpoint.describe()
        ))),
    }
    let report = relay.run()?;
    Ok(Outcome {
        text: format!(
            "relay stopped: {} session(s), {} failed authentication(s), {} refused connection(s), \
             {} bytes to the port, {} bytes from it",
            report.sessions,
            report.auth_failures,
            report.refused,
            report.bytes_to_port,
            report.bytes_from_port
        ),
        json: json!({ "relay": report }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_modem_target_is_refused_before_the_key_and_the_port() {
        // No key anywhere and a port that does not exist: the modem: target is what is refused.
        let args = RelayArgs {
            port: "/nonexistent/ttyUSB0".into(),
            baud: 115_200,
            listen: DEFAULT_LISTEN.into(),
            connect: Some("modem:/nonexistent/ttyUSB2?profile=telit&host=h&port=7000".into()),
            key_file: Some(PathBuf::from("/nonexistent/key")),
            once: true,
            handshake_timeout: Duration::from_secs(10),
            auth_backoff: Duration::from_secs(1),
        };
        let mut bars = Bars::new(false, false);
        let Err(err) = run(&args, &mut bars) else {
            panic!("a malformed modem: target was accepted");
        };
        assert!(
            matches!(
                err.downcast_ref::<stm32boot::Error>(),
                Some(stm32boot::Error::InvalidRequest(_))
            ),
            "{err:#}"
        );
        let text = format!("{err:#}");
        assert!(
            text.contains("--connect") && text.contains("apn="),
            "{text}"
        );
    }

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1:7000"));
        assert!(is_loopback("[::1]:7000"));
        assert!(is_loopback("localhost:7000"));
        assert!(!is_loopback("0.0.0.0:7000"));
        assert!(!is_loopback("192.168.1.2:7000"));
    }
}
