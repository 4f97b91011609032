//! Rate limiting of failed authentications: exponential backoff per peer address, and a global
//! cap on failures per time window. Pure: the caller passes the time, so tests use a made-up
//! clock.
//!
//! A peer in backoff, or any peer while the global cap is reached, is refused at once, before a
//! challenge: it costs the relay one accept and one short line.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limiter's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a peer must wait after its first failure; doubled for each further one.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
    /// At most this many failures from all peers together within [`Limits::window`]; beyond
    /// that, every new connection is refused until the oldest failure leaves the window.
    pub global_failures: usize,
    /// The window of the global cap.
    pub window: Duration,
    /// Peers remembered at most (the oldest are forgotten first).
    pub max_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            global_failures: 30,
            window: Duration::from_secs(60),
            max_peers: 4096,
        }
    }
}

/// Whether a new connection may try to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Allowed,
    /// No: this peer failed recently.
    PeerBackoff {
        /// Until it may try again.
        remaining: Duration,
        /// Its failures in a row.
        failures: u32,
    },
    /// No: too many failures from all peers recently.
    GlobalCap {
        /// Until the cap lifts.
        remaining: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    failures: u32,
    until: Instant,
}

/// The limiter's state.
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    peers: HashMap<IpAddr, Peer>,
    recent: VecDeque<Instant>,
}

impl RateLimiter {
    /// No failures yet.
    pub fn new(limits: Limits) -> RateLimiter {
        RateLimiter {
            limits,
            peers: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= self.limits.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    /// Whether `ip` may try now.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admission {
        if let Some(peer) = self.peers.get(&ip) {
            if now < peer.until {
                return Admission::PeerBackoff {
                    remaining: peer.until - now,
                    failures: peer.failures,
                };
            }
        }
        self.prune(now);
        if self.recent.len() >= self.limits.global_failures {
            if let Some(&oldest) = self.recent.front() {
                return Admission::GlobalCap {
                    remaining: (oldest + self.limits.window).saturating_duration_since(now),
                };
            }
        }
        Admission::Allowed
    }

    /// Record a failed authentication from `ip`; returns the backoff it now has.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Duration {
        self.prune(now);
        self.recent.push_back(now);
        if self.recent.len() > self.limits.global_failures {
            self.recent.pop_front();
        }
        let max = self.limits.backoff_max;
        let failures = match self.peers.get(&ip) {
            // A peer that stayed quiet for a whole maximum backoff starts again.
            Some(p) if now.saturating_duration_since(p.until) < max => p.failures + 1,
            _ => 1,
        };
        let backoff = self
            .limits
            .backoff_base
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(max);
        if !self.peers.contains_key(&ip) && self.peers.len() >= self.limits.max_peers {
            self.forget_one(now);
        }
        self.peers.insert(
            ip,
            Peer {
                failures,
                until: now + backoff,
            },
        );
        backoff
    }

    /// Record a successful authentication from `ip`: its failures are forgotten.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.peers.remove(&ip);
    }

    /// Make room: drop a peer whose backoff is over, or else the one whose backoff ends first.
    fn forget_one(&mut self, now: Instant) {
        let victim = self
            .peers
            .iter()
            .find(|(_, p)| p.until <= now)
            .or_else(|| self.peers.iter().min_by_key(|(_, p)| p.until))
            .map(|(ip, _)| *ip);
        if let Some(ip) = victim {
            self.peers.remove(&ip);
        }
    }

    /// Peers remembered now.
    pub fn tracked(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_failure_puts_the_peer_in_exponential_backoff() {
        let mut l = RateLimiter::new(Limits::default());
        let t0 = Instant::now();
        assert_eq!(l.admit(ip(1), t0), Admission::Allowed);
        assert_eq!(l.failed(ip(1), t0), secs(1));
        // An immediate retry is refused, another peer is not.
        assert_eq!(
            l.admit(ip(1), t0),
            Admission::PeerBackoff {
                remaining: secs(1),
                failures: 1
            }
        );
        assert_eq!(l.admit(ip(2), t0), Admission::Allowed);
        // After the backoff it may try again; each failure doubles it.
        let t1 = t0 + secs(1);
        assert_eq!(l.admit(ip(1), t1), Admission::Allowed);
        assert_eq!(l.failed(ip(1), t1), secs(2));
        let t2 = t1 + secs(2);
        assert_eq!(l.failed(ip(1), t2), secs(4));
        let mut t = t2 + secs(4);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = l.failed(ip(1), t);
            t += last;
        }
        assert_eq!(last, secs(600), "capped at the maximum");
        // A success forgets the failures.
        l.succeeded(ip(1));
        assert_eq!(l.admit(ip(1), t), Admission::Allowed);
        assert_eq!(l.failed(ip(1), t), secs(1));
    }

    #[test]
    fn a_quiet_peer_starts_again() {
        let mut l = RateLimiter::new(Limits::default());
        let t0 = Instant::now();
        l.failed(ip(1), t0);
        l.failed(ip(1), t0 + secs(1));
        assert_eq!(l.failed(ip(1), t0 + secs(3) + secs(600)), secs(1));
    }

    #[test]
    fn the_global_cap_refuses_everyone_until_the_window_moves_on() {
        let limits = Limits {
            global_failures: 3,
            window: secs(60),
            ..Limits::default()
        };
        let mut l = RateLimiter::new(limits);
        let t0 = Instant::now();
        for i in 0..3 {
            l.failed(ip(i), t0 + secs(u64::from(i)));
        }
        let t = t0 + secs(10);
        assert_eq!(
            l.admit(ip(200), t),
            Admission::GlobalCap {
                remaining: secs(50)
            }
        );
        assert_eq!(l.admit(ip(200), t0 + secs(60)), Admission::Allowed);
    }

    #[test]
    fn memory_is_bounded() {
        let limits = Limits {
            max_peers: 10,
            global_failures: 1000,
            ..Limits::default()
        };
        let mut l = RateLimiter::new(limits);
        let t0 = Instant::now();
        for i in 0..100u8 {
            l.failed(ip(i), t0);
        }
        assert_eq!(l.tracked(), 10);
        // The newest is still remembered.
        assert!(matches!(l.admit(ip(99), t0), Admission::PeerBackoff { .. }));
    }
}
