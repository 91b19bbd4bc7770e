//! The protobuf codec every generated service and client uses: prost's,
//! except that a message that cannot be decoded is `INVALID_ARGUMENT` (the
//! caller sent bytes that are not the request type — invalid UTF-8 in a
//! string, a truncated varint, garbage), with a `BadRequest` naming the field
//! decoding stopped at. tonic's own codec calls that `INTERNAL`, which tells
//! a caller the server is broken and invites a retry that cannot help.
//! No lifecycle contract (C1–C20): bad input gets a precise status and changes nothing.
//!
//! On the client side the same mapping applies to an undecodable *response*;
//! the reason (`UNDECODABLE_MESSAGE`) says what happened either way.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstEncoder};

/// prost encoding, decoding errors as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _type: PhantomData }
    }
}

/// Decodes `U`, answering bad bytes with `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|err| {
            let (field, description) = split_decode_error(&err.to_string());
            super::status::undecodable(
                &field,
                format!("the message could not be decoded: {description}"),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// prost says where decoding failed only in its `Display`:
/// `failed to decode Protobuf message: Inner.field: Outer.field: what`, the
/// innermost message first. This turns that into a field path from the
/// request's root (`outer_field.inner_field`, or `request` when decoding
/// failed outside any field) and the description.
fn split_decode_error(text: &str) -> (String, String) {
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(text);
    let mut fields = Vec::new();
    while let Some((head, tail)) = rest.split_once(": ") {
        match head.split_once('.') {
            Some((message, field)) if is_ident(message) && is_ident(field) => {
                fields.push(field.to_owned());
                rest = tail;
            }
            _ => break,
        }
    }
    fields.reverse();
    let path = if fields.is_empty() {
        "request".to_owned()
    } else {
        fields.join(".")
    };
    (path, rest.to_owned())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_path_runs_from_the_root() {
        let (field, what) = split_decode_error(
            "failed to decode Protobuf message: WorkspaceSpec.image: CreateWorkspaceRequest.spec: \
             invalid string value: data is not UTF-8 encoded",
        );
        assert_eq!(field, "spec.image");
        assert_eq!(what, "invalid string value: data is not UTF-8 encoded");
    }

    #[test]
    fn garbage_outside_any_field_names_the_request() {
        let (field, what) =
            split_decode_error("failed to decode Protobuf message: invalid wire type value: 7");
        assert_eq!(field, "request");
        assert_eq!(what, "invalid wire type value: 7");
    }

    #[test]
    fn a_real_decode_error_becomes_invalid_argument() {
        // Field 2 (name) of SetSecretRequest, length 1, byte 0xff: not UTF-8.
        let err = crate::proto::SetSecretRequest::decode(&[0x12, 0x01, 0xff][..]).unwrap_err();
        let (field, _) = split_decode_error(&err.to_string());
        assert_eq!(field, "name");
    }
}
