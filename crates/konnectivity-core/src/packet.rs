//! Building packets, and reading them the way upstream does.
//!
//! Upstream receivers dispatch on `type` and then read the payload through protobuf
//! getters: an absent or mismatched `oneof` reads as an all-default message. The
//! accessors here reproduce that, so a packet with a missing payload is never an
//! error, merely a packet full of zeros.
use bytes::Bytes;
use konnectivity_proto::packet::Payload;
use konnectivity_proto::{
    CloseDial, CloseRequest, CloseResponse, Data, DialRequest, DialResponse, Drain, Packet,
    PacketType, WindowUpdate,
};

/// What a received packet is. Unknown type values are kept, not rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A known packet type.
    Known(PacketType),
    /// A type value this build does not know.
    Unknown(i32),
}

/// The kind of `p` (a missing `type` field is DIAL_REQ, as proto3 defines).
pub fn kind(p: &Packet) -> Kind {
    match PacketType::try_from(p.r#type) {
        Ok(t) => Kind::Known(t),
        Err(_) => Kind::Unknown(p.r#type),
    }
}

/// The name used in metric labels and logs (`DIAL_REQ`, …, `UNKNOWN`).
pub fn type_name(p: &Packet) -> &'static str {
    match kind(p) {
        Kind::Known(t) => t.as_str_name(),
        Kind::Unknown(_) => "UNKNOWN",
    }
}

/// Every name [`type_name`] returns, in a fixed order: per-type counters (the
/// `packet_type` label of the metrics) are indexed by [`type_index`].
pub const TYPE_NAMES: [&str; 9] = [
    "DIAL_REQ",
    "DIAL_RSP",
    "CLOSE_REQ",
    "CLOSE_RSP",
    "DATA",
    "DIAL_CLS",
    "DRAIN",
    "WINDOW_UPDATE",
    "UNKNOWN",
];

/// The position of `p`'s [`type_name`] in [`TYPE_NAMES`], without comparing strings
/// (it runs for every packet a metrics counter sees).
pub fn type_index(p: &Packet) -> usize {
    match kind(p) {
        Kind::Known(PacketType::DialReq) => 0,
        Kind::Known(PacketType::DialRsp) => 1,
        Kind::Known(PacketType::CloseReq) => 2,
        Kind::Known(PacketType::CloseRsp) => 3,
        Kind::Known(PacketType::Data) => 4,
        Kind::Known(PacketType::DialCls) => 5,
        Kind::Known(PacketType::Drain) => 6,
        Kind::Known(PacketType::WindowUpdate) => 7,
        Kind::Unknown(_) => 8,
    }
}

macro_rules! getter {
    ($(#[$doc:meta])* $fn:ident, $variant:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $fn(p: &Packet) -> std::borrow::Cow<'_, $ty> {
            match &p.payload {
                Some(Payload::$variant(m)) => std::borrow::Cow::Borrowed(m),
                _ => std::borrow::Cow::Owned(<$ty>::default()),
            }
        }
    };
}

getter!(/// The dial request payload, or defaults.
    dial_request, DialRequest, DialRequest);
getter!(/// The dial response payload, or defaults.
    dial_response, DialResponse, DialResponse);
getter!(/// The close request payload, or defaults.
    close_request, CloseRequest, CloseRequest);
getter!(/// The close response payload, or defaults.
    close_response, CloseResponse, CloseResponse);
getter!(/// The close-dial payload, or defaults.
    close_dial, CloseDial, CloseDial);
getter!(/// The window update payload, or defaults.
    window_update_of, WindowUpdate, WindowUpdate);

/// Takes the DATA payload out of `p` (defaults when absent), without copying bytes.
pub fn into_data(p: Packet) -> Data {
    match p.payload {
        Some(Payload::Data(d)) => d,
        _ => Data::default(),
    }
}

fn packet(t: PacketType, payload: Payload) -> Packet {
    Packet {
        r#type: t as i32,
        payload: Some(payload),
    }
}

/// `DIAL_REQ{protocol, address, random}`.
pub fn dial_req(protocol: &str, address: &str, random: i64) -> Packet {
    packet(
        PacketType::DialReq,
        Payload::DialRequest(DialRequest {
            protocol: protocol.to_owned(),
            address: address.to_owned(),
            random,
        }),
    )
}

/// `DIAL_RSP{random, connectID, error}`.
pub fn dial_rsp(random: i64, connect_id: i64, error: impl Into<String>) -> Packet {
    packet(
        PacketType::DialRsp,
        Payload::DialResponse(DialResponse {
            error: error.into(),
            connect_id,
            random,
        }),
    )
}

/// `CLOSE_REQ{connectID}`.
pub fn close_req(connect_id: i64) -> Packet {
    packet(
        PacketType::CloseReq,
        Payload::CloseRequest(CloseRequest { connect_id }),
    )
}

/// `CLOSE_RSP{connectID, error}`.
pub fn close_rsp(connect_id: i64, error: impl Into<String>) -> Packet {
    packet(
        PacketType::CloseRsp,
        Payload::CloseResponse(CloseResponse {
            error: error.into(),
            connect_id,
        }),
    )
}

/// `DIAL_CLS{random}`.
pub fn dial_cls(random: i64) -> Packet {
    packet(
        PacketType::DialCls,
        Payload::CloseDial(CloseDial { random }),
    )
}

/// `DATA{connectID, data}`.
pub fn data(connect_id: i64, data: Bytes) -> Packet {
    packet(
        PacketType::Data,
        Payload::Data(Data {
            connect_id,
            error: String::new(),
            data,
        }),
    )
}

/// `DRAIN{}`.
pub fn drain() -> Packet {
    packet(PacketType::Drain, Payload::Drain(Drain {}))
}

/// `WINDOW_UPDATE{connectID, bytes}` (konnectivity-rs extension; negotiated peers only).
pub fn window_update(connect_id: i64, bytes: i64) -> Packet {
    packet(
        PacketType::WindowUpdate,
        Payload::WindowUpdate(WindowUpdate { connect_id, bytes }),
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_packet_type_indexes_its_own_metric_name() {
        for v in (-2..128).chain([i32::MIN, i32::MAX]) {
            let p = Packet {
                r#type: v,
                payload: None,
            };
            assert_eq!(TYPE_NAMES[type_index(&p)], type_name(&p), "type value {v}");
        }
    }

    use super::*;
    use prost::Message;

    #[test]
    fn dial_req_is_encoded_without_the_type_field_and_decodes_as_dial_req() {
        let p = dial_req("tcp", "10.0.0.7:10250", 42);
        let bytes = p.encode_to_vec();
        // field 1 (type) has tag byte 0x08; DIAL_REQ = 0 is the proto3 default and omitted.
        assert_ne!(bytes[0], 0x08);
        let back = Packet::decode(bytes.as_slice()).unwrap();
        assert_eq!(kind(&back), Kind::Known(PacketType::DialReq));
        assert_eq!(dial_request(&back).address, "10.0.0.7:10250");
        assert_eq!(dial_request(&back).random, 42);
    }

    #[test]
    fn a_packet_without_payload_reads_as_defaults() {
        let p = Packet {
            r#type: PacketType::Data as i32,
            payload: None,
        };
        assert_eq!(into_data(p).connect_id, 0);
        let p = Packet {
            r#type: PacketType::CloseReq as i32,
            payload: Some(Payload::Drain(Drain {})),
        };
        assert_eq!(close_request(&p).connect_id, 0);
    }

    #[test]
    fn unknown_type_values_are_kept() {
        let p = Packet {
            r#type: 77,
            payload: None,
        };
        assert_eq!(kind(&p), Kind::Unknown(77));
        assert_eq!(type_name(&p), "UNKNOWN");
    }

    #[test]
    fn field_numbers_match_upstream() {
        // DATA{connectID=1, data="x"}: type=4 (08 04), field 4 (22 len) { 08 01, 1a 01 'x' }
        let bytes = data(1, Bytes::from_static(b"x")).encode_to_vec();
        assert_eq!(
            bytes,
            vec![0x08, 0x04, 0x22, 0x05, 0x08, 0x01, 0x1a, 0x01, b'x']
        );
        // DIAL_RSP{error:"e", connectID:2, random:3}: field 3 { 0a 01 'e', 10 02, 18 03 }
        let bytes = dial_rsp(3, 2, "e").encode_to_vec();
        assert_eq!(
            bytes,
            vec![
                0x08, 0x01, 0x1a, 0x07, 0x0a, 0x01, b'e', 0x10, 0x02, 0x18, 0x03
            ]
        );
    }
}
