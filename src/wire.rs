//! The gRPC framing of `Read`, both directions, in one place: the paths
//! that bypass tonic's codec (the server's `Read` below the codec,
//! [`crate::server::raw_read`], and the client's,
//! [`crate::client::raw_read`]) agree here on how a `ReadResponse` holding
//! file data looks on the wire, byte for byte as tonic's codec would write
//! it (the tests below hold the two equal).
//!
//! The chunk reader does not call this module: it is given
//! [`READ_DATA_FRAMES`], a [`Framing`], and lays every chunk out with it.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::server::read::Framing;

/// The HTTP/2 path of the `Read` method.
pub(crate) const READ_PATH: &str = "/fetchd.v1.Fetchd/Read";
/// The gRPC message prefix: a compression flag and a 4-byte length.
pub(crate) const PREFIX_BYTES: usize = 5;
/// The field number of `ReadResponse.data` in `fetchd.proto`.
pub(crate) const DATA_FIELD: u32 = 2;
/// The key of `ReadResponse.data`: field 2, length-delimited.
pub(crate) const DATA_KEY: u8 = ((DATA_FIELD as u8) << 3) | 2;
/// The key byte and the longest length varint: how much of a message shows
/// whether it is one data field.
pub(crate) const DATA_HEAD_MAX: usize = 1 + 10;
/// Most bytes [`put_data_frame_header`] writes: the message prefix, the
/// field key and the length as a varint.
pub(crate) const DATA_FRAME_HEADER_MAX: usize = PREFIX_BYTES + DATA_HEAD_MAX;

/// Whole gRPC message frames of `ReadResponse { data }`, for the reader to
/// fill: each chunk starts with its frame header.
pub(crate) const READ_DATA_FRAMES: Framing = Framing {
    header_max: DATA_FRAME_HEADER_MAX,
    put_header: put_data_frame_header,
    payload_len: data_frame_payload_len,
};

/// Appends the header of a gRPC message frame holding a `ReadResponse` whose
/// `data` is the next `len` bytes; the caller appends those bytes.
pub(crate) fn put_data_frame_header(len: usize, buf: &mut Vec<u8>) {
    let message_len = key_len(DATA_FIELD) + encoded_len_varint(len as u64) + len;
    buf.push(0); // not compressed
    buf.extend_from_slice(&frame_len(message_len).to_be_bytes());
    encode_key(DATA_FIELD, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// The file bytes in a whole data frame of `frame_len` bytes made by
/// [`put_data_frame_header`]: the frame less its header, whose size depends
/// on the payload's.
pub(crate) fn data_frame_payload_len(frame_len: usize) -> usize {
    let fixed = PREFIX_BYTES + key_len(DATA_FIELD);
    (1..=10)
        .filter_map(|varint| frame_len.checked_sub(fixed + varint))
        .find(|&payload| fixed + encoded_len_varint(payload as u64) + payload == frame_len)
        .unwrap_or(0)
}

/// The 4-byte length of a gRPC message frame. Messages here are at most a
/// chunk plus a few bytes, far below 4 GiB.
fn frame_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// `message` as one uncompressed gRPC message frame, as tonic's codec
/// writes it: a zero compression flag, the length as 4 big-endian bytes,
/// then the encoded message. For the paths that bypass the codec
/// (`server::raw_read`, `client::raw_read`).
pub(crate) fn message_frame(message: &impl prost::Message) -> bytes::Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    // Messages here are far below 4 GiB (the decoders refuse 16 MiB).
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message.encode_raw(&mut buf);
    bytes::Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, ReadResponse, read_response};
    use bytes::Bytes;
    use prost::Message;

    /// What tonic's codec would put on the wire for `message`.
    fn tonic_frame(message: &ReadResponse) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn data_frames_match_the_generated_encoding() {
        for len in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            256 * 1024,
            2_097_151,
            2_097_152,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut frame = Vec::new();
            put_data_frame_header(len, &mut frame);
            assert!(frame.len() <= DATA_FRAME_HEADER_MAX);
            frame.extend_from_slice(&data);
            assert_eq!(data_frame_payload_len(frame.len()), len);
            let expected = tonic_frame(&ReadResponse {
                kind: Some(read_response::Kind::Data(Bytes::from(data))),
            });
            assert_eq!(frame, expected, "data frame of {len} bytes");
        }
    }

    #[test]
    fn message_frames_match_the_generated_encoding() {
        let message = ReadResponse {
            kind: Some(read_response::Kind::Trailer(proto::ReadTrailer {
                sha256: Bytes::from(vec![7; 32]),
            })),
        };
        assert_eq!(message_frame(&message).to_vec(), tonic_frame(&message));
    }
}
