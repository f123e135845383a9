//! Cutting a byte stream into frames: what a WebSocket does for us, done for plain TCP
//! (`tcp://`, `tls://`) — a line per frame, frames ended by a delimiter byte, a length
//! prefix, or MQTT's own packet framing — and on WebSocket for protocols whose frames may span
//! WebSocket messages or share one (MQTT over WebSocket; nats-server packs several lines into
//! one message).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// The largest frame any framing reads or writes, whatever `max_message_size` says.
pub const MAX_FRAME: usize = 64 << 20;

/// How frames are delimited on a byte stream. Written `newline`, `mqtt`,
/// `{delimiter: "\0"}` or `{length_prefixed: {...}}` (a map, not a YAML tag; read through
/// [`super::named`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// One frame per line, ended by `\n` (a `\r` before it is dropped).
    Newline,
    /// Each frame ended by this byte (given as a one-byte string or a number 0..=255).
    Delimiter(#[serde(deserialize_with = "one_byte")] u8),
    /// A length header before each frame.
    LengthPrefixed(LengthPrefix),
    /// MQTT packets (fixed header with its remaining-length varint).
    Mqtt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthPrefix {
    /// Header width: 1, 2 or 4 bytes, or `varint` (protobuf's base-128 varint).
    pub bytes: Width,
    #[serde(default)]
    pub endian: Endian,
    /// Whether the length counts the header itself.
    #[serde(default)]
    pub includes_header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WidthSpec", into = "WidthSpec")]
pub enum Width {
    One,
    Two,
    Four,
    Varint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endian {
    #[default]
    Big,
    Little,
}

/// `bytes:` as written: a number or `varint`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum WidthSpec {
    Bytes(u8),
    Name(String),
}

impl Serialize for Framing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Framing::Newline => s.serialize_str("newline"),
            Framing::Mqtt => s.serialize_str("mqtt"),
            Framing::Delimiter(byte) => super::named::write("delimiter", byte, false, s),
            Framing::LengthPrefixed(prefix) => {
                super::named::write("length_prefixed", prefix, false, s)
            }
        }
    }
}

/// A delimiter as written: a string of one byte (`"\0"`, `"|"`) or its number.
fn one_byte<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ByteSpec {
        Number(u64),
        Text(String),
    }
    let invalid = |what: String| {
        serde::de::Error::custom(format!(
            "a delimiter is one byte: a one-character ASCII string or a number 0..=255, got {what}"
        ))
    };
    match ByteSpec::deserialize(d)? {
        ByteSpec::Number(n) => u8::try_from(n).map_err(|_| invalid(n.to_string())),
        ByteSpec::Text(text) => match text.as_bytes() {
            [byte] => Ok(*byte),
            _ => Err(invalid(format!("{text:?}"))),
        },
    }
}

impl TryFrom<WidthSpec> for Width {
    type Error = String;
    fn try_from(spec: WidthSpec) -> Result<Width, String> {
        match spec {
            WidthSpec::Bytes(1) => Ok(Width::One),
            WidthSpec::Bytes(2) => Ok(Width::Two),
            WidthSpec::Bytes(4) => Ok(Width::Four),
            WidthSpec::Name(name) if name == "varint" => Ok(Width::Varint),
            other => Err(format!(
                "length prefix `bytes` must be 1, 2, 4 or varint, got {other:?}"
            )),
        }
    }
}

impl From<Width> for WidthSpec {
    fn from(width: Width) -> WidthSpec {
        match width {
            Width::One => WidthSpec::Bytes(1),
            Width::Two => WidthSpec::Bytes(2),
            Width::Four => WidthSpec::Bytes(4),
            Width::Varint => WidthSpec::Name("varint".into()),
        }
    }
}

/// A frame that breaks the framing: the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("a frame of {size} bytes is over the limit of {max} bytes (max_message_size)")]
    TooLong { size: usize, max: usize },
    #[error("malformed frame header: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Framing {
    /// Cuts the next whole frame off the front of `buffer`, if it holds one; a frame longer
    /// than `max` bytes is an error (before it is buffered whole, where its length says so).
    pub fn cut(&self, buffer: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FramingError> {
        let max = max.min(MAX_FRAME);
        match self {
            Framing::Delimiter(byte) => cut_at(buffer, *byte, max),
            Framing::Newline => Ok(cut_at(buffer, b'\n', max)?.map(|line| match line.last() {
                Some(b'\r') => line.slice(..line.len() - 1),
                _ => line,
            })),
            Framing::LengthPrefixed(prefix) => prefix.cut(buffer, max),
            Framing::Mqtt => match rumqttc::mqttbytes::check(buffer.iter(), max) {
                Ok(header) => Ok(Some(buffer.split_to(header.frame_length()).freeze())),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
                    Err(FramingError::TooLong { size, max })
                }
                Err(err) => Err(FramingError::Malformed(err.to_string())),
            },
        }
    }

    /// Appends `frame`, delimited, to `out`. MQTT packets carry their own header.
    pub fn put(&self, frame: &[u8], out: &mut BytesMut) -> Result<(), FramingError> {
        if frame.len() > MAX_FRAME {
            return Err(FramingError::TooLong {
                size: frame.len(),
                max: MAX_FRAME,
            });
        }
        match self {
            Framing::Newline | Framing::Delimiter(_) => {
                let end = match self {
                    Framing::Delimiter(byte) => *byte,
                    _ => b'\n',
                };
                out.reserve(frame.len() + 1);
                out.put_slice(frame);
                out.put_u8(end);
            }
            Framing::LengthPrefixed(prefix) => prefix.put(frame, out)?,
            Framing::Mqtt => out.put_slice(frame),
        }
        Ok(())
    }
}

/// The frame before the first `end` byte in `buffer`, cut off with its delimiter; a buffer
/// longer than `max` without one is an error.
fn cut_at(buffer: &mut BytesMut, end: u8, max: usize) -> Result<Option<Bytes>, FramingError> {
    let Some(at) = buffer.iter().position(|&b| b == end) else {
        return if buffer.len() > max {
            Err(FramingError::TooLong {
                size: buffer.len(),
                max,
            })
        } else {
            Ok(None)
        };
    };
    let mut frame = buffer.split_to(at + 1);
    frame.truncate(at);
    Ok(Some(frame.freeze()))
}

impl LengthPrefix {
    fn header_len(&self, length: usize) -> usize {
        match self.bytes {
            Width::One => 1,
            Width::Two => 2,
            Width::Four => 4,
            Width::Varint => varint_len(length as u64),
        }
    }

    fn cut(&self, buffer: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FramingError> {
        let (declared, header) = match self.bytes {
            Width::Varint => match read_varint(buffer)? {
                Some(read) => read,
                None => return Ok(None),
            },
            fixed => {
                let width = self.header_len(0);
                if buffer.len() < width {
                    return Ok(None);
                }
                let mut bytes = [0u8; 8];
                let value = &buffer[..width];
                let declared = match self.endian {
                    Endian::Big => {
                        bytes[8 - width..].copy_from_slice(value);
                        u64::from_be_bytes(bytes)
                    }
                    Endian::Little => {
                        bytes[..width].copy_from_slice(value);
                        u64::from_le_bytes(bytes)
                    }
                };
                debug_assert!(!matches!(fixed, Width::Varint));
                (declared, width)
            }
        };
        let body = if self.includes_header {
            declared.checked_sub(header as u64).ok_or_else(|| {
                FramingError::Malformed(format!(
                    "length {declared} includes the header but is shorter than its {header} bytes"
                ))
            })?
        } else {
            declared
        };
        let body =
            usize::try_from(body)
                .ok()
                .filter(|&n| n <= max)
                .ok_or(FramingError::TooLong {
                    size: body.try_into().unwrap_or(usize::MAX),
                    max,
                })?;
        if buffer.len() < header + body {
            buffer.reserve(header + body - buffer.len());
            return Ok(None);
        }
        buffer.advance(header);
        Ok(Some(buffer.split_to(body).freeze()))
    }

    fn put(&self, frame: &[u8], out: &mut BytesMut) -> Result<(), FramingError> {
        let header = self.header_len(frame.len());
        let mut length = frame.len() as u64;
        if self.includes_header {
            // A varint that counts itself may need one byte more.
            length += self.header_len(frame.len() + header) as u64;
        }
        let limit = match self.bytes {
            Width::One => u64::from(u8::MAX),
            Width::Two => u64::from(u16::MAX),
            Width::Four => u64::from(u32::MAX),
            Width::Varint => u64::MAX,
        };
        if length > limit {
            return Err(FramingError::TooLong {
                size: frame.len(),
                max: limit.try_into().unwrap_or(usize::MAX),
            });
        }
        out.reserve(header + 1 + frame.len());
        match (self.bytes, self.endian) {
            (Width::Varint, _) => put_varint(length, out),
            (width, Endian::Big) => {
                let n = self.header_len(0);
                debug_assert!(!matches!(width, Width::Varint));
                out.put_slice(&length.to_be_bytes()[8 - n..]);
            }
            (_, Endian::Little) => out.put_slice(&length.to_le_bytes()[..self.header_len(0)]),
        }
        out.put_slice(frame);
        Ok(())
    }
}

fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn put_varint(mut value: u64, out: &mut BytesMut) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// A varint at the front of `buffer`: its value and width, or `None` if incomplete.
fn read_varint(buffer: &[u8]) -> Result<Option<(u64, usize)>, FramingError> {
    let mut value = 0u64;
    for (i, &byte) in buffer.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buffer.len() >= 10 {
        return Err(FramingError::Malformed(
            "a varint longer than 10 bytes".into(),
        ));
    }
    Ok(None)
}

/// [`Framing`] with a frame size limit, as a tokio codec for `Framed` over a plain TCP or
/// TLS stream.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    pub framing: Framing,
    /// The longest frame read, in bytes.
    pub max: usize,
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FramingError;

    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        self.framing.cut(buffer, self.max)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FramingError;

    fn encode(&mut self, frame: Bytes, out: &mut BytesMut) -> Result<(), FramingError> {
        self.framing.put(&frame, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framing(yaml: &str) -> Framing {
        super::super::named::from_str(yaml).expect("framing parses")
    }

    fn round_trip(framing: Framing, frames: &[Vec<u8>], chunk: usize) -> Vec<Bytes> {
        let mut wire = BytesMut::new();
        for frame in frames {
            framing.put(frame, &mut wire).expect("fits");
        }
        // Arrives in chunks: nothing is cut before it is whole.
        let mut buffer = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            buffer.extend_from_slice(piece);
            while let Some(frame) = framing.cut(&mut buffer, MAX_FRAME).expect("well formed") {
                out.push(frame);
            }
        }
        assert!(buffer.is_empty(), "nothing left over");
        out
    }

    #[test]
    fn every_length_prefix_is_read_as_written() {
        for yaml in [
            "{length_prefixed: {bytes: 1}}",
            "{length_prefixed: {bytes: 2, endian: little}}",
            "{length_prefixed: {bytes: 4}}",
            "{length_prefixed: {bytes: 4, includes_header: true}}",
            "{length_prefixed: {bytes: varint}}",
            "{length_prefixed: {bytes: varint, includes_header: true}}",
        ] {
            let framing = framing(yaml);
            let frames = vec![b"hello".to_vec(), Vec::new(), vec![7u8; 200]];
            let read = round_trip(framing, &frames, 3);
            assert_eq!(read, frames, "{yaml}");
        }
    }

    #[test]
    fn delimited_frames_are_read_as_written() {
        for yaml in ["{delimiter: \"\\0\"}", "{delimiter: 0}", "{delimiter: '|'}"] {
            let framing = framing(yaml);
            let frames = vec![b"hello".to_vec(), Vec::new(), vec![b'x'; 200]];
            assert_eq!(round_trip(framing, &frames, 3), frames, "{yaml}");
        }
        let mut out = BytesMut::new();
        framing("{delimiter: 0}")
            .put(b"ab", &mut out)
            .expect("fits");
        assert_eq!(&out[..], b"ab\0");
        for bad in ["{delimiter: 300}", "{delimiter: ab}", "{delimiter: ''}"] {
            let err = super::super::named::from_str::<Framing>(bad).expect_err("refused");
            assert!(err.to_string().contains("one byte"), "{bad}: {err}");
        }
        let mut long = BytesMut::from(&[b'x'; 20][..]);
        assert!(matches!(
            framing("{delimiter: 0}").cut(&mut long, 10),
            Err(FramingError::TooLong { .. })
        ));
    }

    #[test]
    fn headers_are_as_specified() {
        let mut out = BytesMut::new();
        framing("{length_prefixed: {bytes: 2, endian: little, includes_header: true}}")
            .put(b"abc", &mut out)
            .expect("fits");
        assert_eq!(&out[..], &[5, 0, b'a', b'b', b'c']);
        out.clear();
        framing("{length_prefixed: {bytes: varint}}")
            .put(&[0u8; 300], &mut out)
            .expect("fits");
        assert_eq!(&out[..2], &[0xac, 0x02]);
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_is_buffered_whole() {
        let prefixed = framing("{length_prefixed: {bytes: 4}}");
        let mut header_only = BytesMut::from(&[0u8, 1, 0, 0][..]);
        assert!(matches!(
            prefixed.cut(&mut header_only, 1024),
            Err(FramingError::TooLong {
                size: 65536,
                max: 1024
            })
        ));
        let mut endless_line = BytesMut::from(&[b'x'; 2000][..]);
        assert!(Framing::Newline.cut(&mut endless_line, 1024).is_err());
    }

    #[test]
    fn lines_drop_their_carriage_return() {
        let mut buffer = BytesMut::from(&b"PING\r\n+OK\npartial"[..]);
        let framing = Framing::Newline;
        assert_eq!(
            framing
                .cut(&mut buffer, MAX_FRAME)
                .expect("well formed")
                .expect("a whole frame"),
            "PING"
        );
        assert_eq!(
            framing
                .cut(&mut buffer, MAX_FRAME)
                .expect("well formed")
                .expect("a whole frame"),
            "+OK"
        );
        assert!(
            framing
                .cut(&mut buffer, MAX_FRAME)
                .expect("well formed")
                .is_none()
        );
    }

    #[test]
    fn bad_frames_and_specs_are_refused() {
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            framing("{length_prefixed: {bytes: 4}}").cut(&mut huge, MAX_FRAME),
            Err(FramingError::TooLong { .. })
        ));
        let counted = framing("{length_prefixed: {bytes: 1, includes_header: true}}");
        let mut empty = BytesMut::from(&[1u8][..]);
        assert_eq!(
            counted
                .cut(&mut empty, MAX_FRAME)
                .expect("well formed")
                .expect("a whole frame")
                .len(),
            0,
            "just a header"
        );
        let mut short = BytesMut::from(&[3u8, b'a'][..]);
        assert!(
            matches!(counted.cut(&mut short, MAX_FRAME), Ok(None)),
            "one byte still to come"
        );
        let mut lying = BytesMut::from(&[0u8, 1][..]);
        assert!(matches!(
            framing("{length_prefixed: {bytes: 1, includes_header: true}}")
                .cut(&mut lying, MAX_FRAME),
            Err(FramingError::Malformed(_))
        ));
        let err = super::super::named::from_str::<Framing>("{length_prefixed: {bytes: 3}}")
            .expect_err("3 is no width");
        assert!(err.to_string().contains("1, 2, 4 or varint"), "{err}");
        let err = super::super::named::from_str::<Framing>("lines").expect_err("no such framing");
        assert!(
            err.to_string()
                .contains("expected one of `newline`, `delimiter`, `length_prefixed`, `mqtt`"),
            "{err}"
        );
        let again: Framing = super::super::named::from_str(
            &serde_norway::to_string(&framing("{length_prefixed: {bytes: varint}}"))
                .expect("writes"),
        )
        .expect("what is written reads back");
        assert_eq!(again, framing("{length_prefixed: {bytes: varint}}"));
        assert!(
            Framing::LengthPrefixed(LengthPrefix {
                bytes: Width::One,
                endian: Endian::Big,
                includes_header: false
            })
            .put(&[0u8; 256], &mut BytesMut::new())
            .is_err(),
            "256 bytes do not fit a one-byte length"
        );
    }

    #[test]
    fn mqtt_packets_are_cut_whole() {
        let mut wire = BytesMut::new();
        rumqttc::mqttbytes::v4::Packet::PingReq
            .write(&mut wire, MAX_FRAME)
            .expect("writes");
        let mut publish = rumqttc::mqttbytes::v4::Publish::new(
            "room-0",
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            vec![b'x'; 300],
        );
        publish.pkid = 1;
        rumqttc::mqttbytes::v4::Packet::Publish(publish)
            .write(&mut wire, MAX_FRAME)
            .expect("writes");
        let total = wire.len();
        let mut buffer = BytesMut::new();
        let mut lengths = Vec::new();
        for piece in wire.chunks(7) {
            buffer.extend_from_slice(piece);
            while let Some(frame) = Framing::Mqtt
                .cut(&mut buffer, MAX_FRAME)
                .expect("well formed")
            {
                lengths.push(frame.len());
            }
        }
        assert_eq!(lengths[0], 2, "PINGREQ");
        assert_eq!(lengths.iter().sum::<usize>(), total);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever arrives, cutting never panics and never yields more than arrived.
        #[test]
        fn cutting_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            for framing in [
                Framing::Newline,
                Framing::Mqtt,
                framing("{length_prefixed: {bytes: varint, includes_header: true}}"),
                framing("{length_prefixed: {bytes: 2}}"),
            ] {
                let mut buffer = BytesMut::from(&data[..]);
                let mut taken = 0;
                while let Ok(Some(frame)) = framing.cut(&mut buffer, MAX_FRAME) {
                    taken += frame.len();
                    prop_assert!(taken <= data.len());
                }
            }
        }
    }
}
