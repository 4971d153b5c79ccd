//! The life of one tunnel as the server sees it from its frontend's side: one state
//! machine for both frontends (a gRPC `Proxy` stream, an HTTP CONNECT), sans-IO.
//!
//! ```text
//!   Idle ──DIAL_REQ──▶ Dialing{random, deadline} ──DIAL_RSP ok──▶ Established{connect_id}
//!    │                   │   deadline / error / DIAL_CLS              │ CLOSE_REQ(own id)
//!    │                   ▼                                            ▼
//!    └─DATA──────────▶ Discarding ◀────────agent closed──────── Closing{connect_id}
//! ```
//!
//! The machine owns the **isolation rule**: a frontend may only name the connect ID
//! its own dial established, and only the dial ID it sent. DATA or CLOSE_REQ naming any
//! other connect ID (including any ID at all before the agent answered the dial) is
//! never forwarded to the agent: it is answered `CLOSE_RSP{id, "mismatched connection
//! IDs"}` to the frontend that sent it and reported as [`Step::Foreign`], and the
//! tunnel itself is unaffected. Upstream forwards whatever ID a frontend names, so one
//! frontend can write into or close another's connection; here it cannot.
//!
//! It also owns the pending dial's deadline: `--backend-dial-timeout` when set, else
//! `--dial-deadline`. Time is an input (`now`), never read here.
//!
//! The I/O around it (the server's frontends) carries what only it can: the dial's
//! completion channel `D` while dialing, the connection's queues `C` once established.
//! Keeping them inside the variants means the state and the resources can never
//! disagree.
use std::time::{Duration, Instant};

use crate::dial::DialError;
use crate::packet::{self, Kind};
use crate::wire;
use crate::{Packet, PacketType};

/// The two server bounds on a pending dial.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DialBounds {
    /// `--backend-dial-timeout` (`None`: off, upstream's default).
    pub backend_dial_timeout: Option<Duration>,
    /// `--dial-deadline`: bounds a pending dial when `--backend-dial-timeout` is off.
    pub dial_deadline: Option<Duration>,
}

impl DialBounds {
    /// How long a dial may stay pending.
    pub fn pending(&self) -> Option<Duration> {
        self.backend_dial_timeout.or(self.dial_deadline)
    }
}

/// Where a tunnel is in its life, with what the I/O holds in each state.
#[derive(Debug)]
pub enum State<D, C> {
    /// No dial yet.
    Idle,
    /// DIAL_REQ sent to an agent; waiting for its answer.
    Dialing {
        /// The frontend's dial ID.
        random: i64,
        /// When the dial fails with [`DialError::BackendDialTimeout`] (`None`: no bound,
        /// or the deadline already fired and the I/O is expiring the dial).
        deadline: Option<Instant>,
        /// The I/O's handle on the dial's completion.
        dial: D,
    },
    /// The agent answered with a connect ID: DATA flows both ways.
    Established {
        /// The connect ID the agent assigned: the only one this frontend may name.
        connect_id: i64,
        /// The I/O's connection handle.
        conn: C,
    },
    /// The frontend sent CLOSE_REQ for its connection: its further packets are
    /// discarded; the agent's remaining DATA and its CLOSE_RSP still reach it.
    Closing {
        /// The connection's ID.
        connect_id: i64,
        /// The I/O's connection handle.
        conn: C,
    },
    /// Finished (dial failed, connection closed, or a protocol error): everything the
    /// frontend sends is read and discarded until it goes away.
    Discarding,
}

/// A packet from the frontend that names an ID that is not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// DATA with a connect ID other than the tunnel's (or before it has one).
    Data {
        /// The ID the frontend named.
        named: i64,
    },
    /// CLOSE_REQ with a connect ID other than the tunnel's (or before it has one).
    CloseReq {
        /// The ID the frontend named.
        named: i64,
    },
    /// DIAL_CLS with a dial ID other than the tunnel's pending one.
    DialCls {
        /// The dial ID the frontend named.
        named: i64,
    },
}

/// What the I/O must do after a frontend packet.
#[derive(Debug, PartialEq)]
pub enum Step<D> {
    /// Nothing.
    Nothing,
    /// Start the dial: pick an agent, register `random`, send it the DIAL_REQ; then
    /// report back with [`Tunnel::dial_started`] or [`Tunnel::dial_failed`].
    Dial {
        /// The frontend's dial ID.
        random: i64,
        /// The protocol the frontend asked for, as sent: the server's dial path
        /// checks it against its allowlist ([`crate::protocol`]).
        protocol: String,
        /// The destination.
        address: String,
    },
    /// Send this packet (DATA or CLOSE_REQ of the tunnel's own connection) to the agent.
    Forward(Packet),
    /// The frontend gave up on its own pending dial (DIAL_CLS): forget it, tell the
    /// agent.
    Abandon {
        /// The dial ID.
        random: i64,
        /// The I/O's handle on that dial.
        dial: D,
    },
    /// Send this answer to the frontend.
    Reply(Packet),
    /// The frontend named an ID that is not its own: nothing was forwarded; count it,
    /// log it, and send the answer (if any) to the frontend.
    Foreign {
        /// What was named.
        what: Foreign,
        /// The answer to the frontend.
        reply: Option<Packet>,
    },
    /// A second DIAL_REQ, or anything after the tunnel ended: ignored.
    Ignored,
}

/// The I/O handle of the current state, to wait on.
#[derive(Debug)]
pub enum Io<'a, D, C> {
    /// Nothing to wait on from the agent side.
    Nothing,
    /// The pending dial.
    Dial(&'a mut D),
    /// The connection.
    Conn(&'a mut C),
}

/// What is left for the I/O to release when the frontend goes away.
#[derive(Debug)]
pub enum Leftover<D, C> {
    /// Nothing is held on the agent.
    Nothing,
    /// A pending dial: abandon it (DIAL_CLS).
    Dial {
        /// The dial ID.
        random: i64,
        /// The I/O's handle.
        dial: D,
    },
    /// A connection: close it (CLOSE_REQ) if the agent has not.
    Conn {
        /// The connect ID.
        connect_id: i64,
        /// The I/O's handle.
        conn: C,
    },
}

/// One tunnel's state machine.
#[derive(Debug)]
pub struct Tunnel<D, C> {
    state: State<D, C>,
    bounds: DialBounds,
}

impl<D, C> Tunnel<D, C> {
    /// An idle tunnel whose dials are bounded by `bounds`.
    pub fn new(bounds: DialBounds) -> Self {
        Self {
            state: State::Idle,
            bounds,
        }
    }

    /// The current state.
    pub fn state(&self) -> &State<D, C> {
        &self.state
    }

    /// Whether the tunnel is still live (not closing, not discarding).
    pub fn is_live(&self) -> bool {
        matches!(
            self.state,
            State::Idle | State::Dialing { .. } | State::Established { .. }
        )
    }

    /// Whether frontend DATA would be forwarded now (so reading the frontend should
    /// wait for the agent's credit).
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// The handle the I/O waits on in the current state.
    pub fn io_mut(&mut self) -> Io<'_, D, C> {
        match &mut self.state {
            State::Dialing { dial, .. } => Io::Dial(dial),
            State::Established { conn, .. } | State::Closing { conn, .. } => Io::Conn(conn),
            State::Idle | State::Discarding => Io::Nothing,
        }
    }

    /// The pending dial's handle.
    pub fn dial_mut(&mut self) -> Option<&mut D> {
        match &mut self.state {
            State::Dialing { dial, .. } => Some(dial),
            _ => None,
        }
    }

    /// The connection and its ID, while established or closing.
    pub fn conn_mut(&mut self) -> Option<(i64, &mut C)> {
        match &mut self.state {
            State::Established { connect_id, conn } | State::Closing { connect_id, conn } => {
                Some((*connect_id, conn))
            }
            _ => None,
        }
    }

    /// The connection's handle, while established or closing.
    pub fn conn(&self) -> Option<&C> {
        match &self.state {
            State::Established { conn, .. } | State::Closing { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// When the pending dial times out.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Dialing { deadline, .. } => deadline,
            _ => None,
        }
    }

    /// A CONNECT request (or a DIAL_REQ): in `Idle`, the dial to start.
    pub fn connect(&mut self, random: i64, protocol: &str, address: &str) -> Step<D> {
        match self.state {
            State::Idle => Step::Dial {
                random,
                protocol: protocol.to_owned(),
                address: address.to_owned(),
            },
            _ => Step::Ignored,
        }
    }

    /// The I/O started the dial the last [`Step::Dial`] asked for.
    pub fn dial_started(&mut self, random: i64, dial: D, now: Instant) {
        if matches!(self.state, State::Idle) {
            self.state = State::Dialing {
                random,
                deadline: self.bounds.pending().map(|d| now + d),
                dial,
            };
        }
    }

    /// The dial failed (could not start, the agent refused it, or it timed out):
    /// the answer for a gRPC frontend, and the tunnel is finished.
    pub fn dial_failed(&mut self, random: i64, error: &DialError) -> Packet {
        self.state = State::Discarding;
        match error {
            DialError::AgentClosed => packet::dial_cls(random),
            e => packet::dial_rsp(random, 0, e.wire_text()),
        }
    }

    /// The pending dial's answer failed: like [`Self::dial_failed`] for the pending
    /// dial, `None` if there is none.
    pub fn pending_failed(&mut self, error: &DialError) -> Option<Packet> {
        match self.state {
            State::Dialing { random, .. } => Some(self.dial_failed(random, error)),
            _ => None,
        }
    }

    /// The agent answered the pending dial with `connect_id`: the connection handle is
    /// made from the dial's handle and `x` by `make`; returns the DIAL_RSP for a gRPC
    /// frontend. `Err(x)` when there is no pending dial any more: the I/O must close
    /// that connection.
    pub fn dial_connected<X>(
        &mut self,
        connect_id: i64,
        x: X,
        make: impl FnOnce(D, X) -> C,
    ) -> Result<Packet, X> {
        match std::mem::replace(&mut self.state, State::Discarding) {
            State::Dialing { random, dial, .. } => {
                self.state = State::Established {
                    connect_id,
                    conn: make(dial, x),
                };
                Ok(packet::dial_rsp(random, connect_id, ""))
            }
            other => {
                self.state = other;
                Err(x)
            }
        }
    }

    /// Time passed: when the pending dial's deadline is due, returns its dial ID; the
    /// I/O then removes the pending dial and, if it was still there, reports
    /// [`DialError::BackendDialTimeout`] with [`Self::pending_failed`] (if the agent's
    /// answer won the race, that answer arrives instead). Fires once.
    pub fn poll_deadline(&mut self, now: Instant) -> Option<i64> {
        match &mut self.state {
            State::Dialing {
                random, deadline, ..
            } if deadline.is_some_and(|d| d <= now) => {
                *deadline = None;
                Some(*random)
            }
            _ => None,
        }
    }

    /// The agent closed the connection (CLOSE_RSP, or its stream ended): the tunnel is
    /// finished; returns the connection's ID and handle.
    pub fn agent_closed(&mut self) -> Option<(i64, C)> {
        match std::mem::replace(&mut self.state, State::Discarding) {
            State::Established { connect_id, conn } | State::Closing { connect_id, conn } => {
                Some((connect_id, conn))
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The frontend closed its side of an established connection (CONNECT: EOF or an
    /// error on the client's socket): what the agent must be told.
    pub fn frontend_gone(self) -> Leftover<D, C> {
        match self.state {
            State::Dialing { random, dial, .. } => Leftover::Dial { random, dial },
            State::Established { connect_id, conn } | State::Closing { connect_id, conn } => {
                Leftover::Conn { connect_id, conn }
            }
            State::Idle | State::Discarding => Leftover::Nothing,
        }
    }

    /// Handles one packet from a gRPC frontend (spec §2.3, plus the isolation rule).
    pub fn on_frontend(&mut self, p: Packet) -> Step<D> {
        if matches!(self.state, State::Closing { .. } | State::Discarding) {
            return Step::Ignored;
        }
        match packet::kind(&p) {
            Kind::Known(PacketType::DialReq) => {
                let req = packet::dial_request(&p);
                self.connect(req.random, &req.protocol, &req.address)
            }
            Kind::Known(PacketType::CloseReq) => {
                let named = packet::close_request(&p).connect_id;
                match &self.state {
                    State::Idle => {
                        Step::Reply(packet::close_rsp(named, wire::BACKEND_UNINITIALIZED))
                    }
                    State::Established { connect_id, .. } if *connect_id == named => {
                        self.close_own();
                        Step::Forward(packet::close_req(named))
                    }
                    _ => Step::Foreign {
                        what: Foreign::CloseReq { named },
                        reply: Some(packet::close_rsp(named, wire::MISMATCHED_CONNECTION_IDS)),
                    },
                }
            }
            Kind::Known(PacketType::DialCls) => {
                let named = packet::close_dial(&p).random;
                match std::mem::replace(&mut self.state, State::Discarding) {
                    State::Dialing { random, dial, .. } if random == named => {
                        Step::Abandon { random, dial }
                    }
                    other => {
                        self.state = other;
                        Step::Foreign {
                            what: Foreign::DialCls { named },
                            reply: None,
                        }
                    }
                }
            }
            Kind::Known(PacketType::Data) => {
                let d = packet::into_data(p);
                match &self.state {
                    State::Idle => {
                        self.state = State::Discarding;
                        Step::Reply(packet::close_rsp(
                            d.connect_id,
                            wire::BACKEND_NOT_INITIALIZED,
                        ))
                    }
                    _ if d.connect_id == 0 => Step::Nothing,
                    State::Established { connect_id, .. } if *connect_id == d.connect_id => {
                        Step::Forward(packet::data(d.connect_id, d.data))
                    }
                    _ => Step::Foreign {
                        what: Foreign::Data {
                            named: d.connect_id,
                        },
                        reply: Some(packet::close_rsp(
                            d.connect_id,
                            wire::MISMATCHED_CONNECTION_IDS,
                        )),
                    },
                }
            }
            _ => Step::Nothing,
        }
    }

    /// Established → Closing.
    fn close_own(&mut self) {
        if let State::Established { connect_id, conn } =
            std::mem::replace(&mut self.state, State::Discarding)
        {
            self.state = State::Closing { connect_id, conn };
        }
    }
}

/// The payload of a DATA [`Step::Forward`], for the I/O's credit accounting.
pub fn forwarded_len(p: &Packet) -> usize {
    match &p.payload {
        Some(konnectivity_proto::packet::Payload::Data(d)) => d.data.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
