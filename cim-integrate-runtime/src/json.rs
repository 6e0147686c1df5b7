//! JSON reading and writing on the runtime's hot paths: `serde_json` itself, with the work it
//! repeats per string done once per payload.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::ser::{self, Serializer as _};

type Result<T> = serde_json::Result<T>;

/// `serde_json::from_slice`, with the same results: a payload that is valid UTF-8 (every payload
/// this crate's encoder writes) is checked once, as a whole, and read as a `str`, where
/// `serde_json` does not check each string again; any other goes through `from_slice`, which
/// gives its errors exactly as before.
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// `serde_json::to_writer(out, value)`, byte for byte: compact JSON, written by a serializer of
/// its own whose strings are checked for what needs escaping eight bytes at a time and copied
/// whole when nothing does (`serde_json` looks each byte up in a table and copies the runs
/// between escapes). Whatever is not a plain string (a string that needs escaping, a float, a
/// map key that is not a string) is written by `serde_json` itself.
pub(crate) fn to_writer<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<()> {
    value.serialize(Writer { out })
}

/// [`to_writer`] into a new `Vec` (`serde_json::to_vec`'s bytes, and its starting capacity).
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// `true` if `bytes` holds a byte JSON escapes: a control character (below 0x20), `"` or `\`.
/// Eight bytes at a time; the last eight (or, under eight, the first and last four) overlap
/// what came before rather than going byte by byte.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of a byte of the result is set if that byte of `x` needs escaping, or a
    /// lower one does (so the whole is exact: non-zero if and only if some byte does).
    #[inline(always)]
    fn flags(x: u64) -> u64 {
        let (quote, backslash) = (x ^ (ONES * u64::from(b'"')), x ^ (ONES * u64::from(b'\\')));
        (x.wrapping_sub(ONES * 0x20) & !x)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
    }
    let found = if let Some(last) = bytes.last_chunk::<8>() {
        let (words, _) = bytes.as_chunks::<8>();
        words.iter().fold(flags(u64::from_ne_bytes(*last)), |acc, w| {
            acc | flags(u64::from_ne_bytes(*w))
        })
    } else if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        flags(u64::from(u32::from_ne_bytes(*first)) | (u64::from(u32::from_ne_bytes(*last)) << 32))
    } else {
        return bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    };
    found & HIGH != 0
}

/// `s` as a JSON string, quoted and escaped as `serde_json` escapes it.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    if needs_escape(s.as_bytes()) {
        return (&mut serde_json::Serializer::new(out)).serialize_str(s);
    }
    write_plain(out, s);
    Ok(())
}

/// `s`, which holds nothing JSON escapes, as a JSON string.
#[inline]
pub(crate) fn write_plain(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// The names `serde_json` gives the one-field structs of its `RawValue` and of a `Number` with
/// arbitrary precision (features of `serde_json` that a dependent crate may turn on): their field
/// is JSON text written as it is.
const RAW_TOKENS: [&str; 2] = ["$serde_json::private::RawValue", "$serde_json::private::Number"];

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Leaves the value to `serde_json`.
    fn json(self, write: impl FnOnce(&mut serde_json::Serializer<&mut Vec<u8>>) -> Result<()>) -> Result<()> {
        write(&mut serde_json::Serializer::new(self.out))
    }

    fn int(self, digits: &str) -> Result<()> {
        self.out.extend_from_slice(digits.as_bytes());
        Ok(())
    }

    /// `{"variant":` of an enum variant that carries data.
    fn open_variant(&mut self, variant: &str) -> Result<()> {
        self.out.push(b'{');
        write_str(self.out, variant)?;
        self.out.push(b':');
        Ok(())
    }

    /// `{"variant":[` or `{"variant":{` (`open`) of a tuple or struct variant, closed by `close`.
    fn variant_of(mut self, variant: &str, open: u8, close: &'static [u8]) -> Result<Compound<'a>> {
        self.open_variant(variant)?;
        self.out.push(open);
        Ok(Compound::new(self.out, close))
    }
}

macro_rules! ints {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<()> {
            self.int(itoa::Buffer::new().format(v))
        }
    )*};
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    ints!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_i128: i128,
          serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64, serialize_u128: u128);

    fn serialize_f32(self, v: f32) -> Result<()> {
        self.json(|s| s.serialize_f32(v))
    }

    fn serialize_f64(self, v: f64) -> Result<()> {
        self.json(|s| s.serialize_f64(v))
    }

    fn serialize_char(self, v: char) -> Result<()> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<()> {
        write_str(self.out, v)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.json(|s| s.serialize_bytes(v))
    }

    fn serialize_none(self) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<()> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<()> {
        write_str(self.out, variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<()> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.open_variant(variant)?;
        value.serialize(Writer { out: &mut *self.out })?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>> {
        self.out.push(b'[');
        Ok(Compound::new(self.out, b"]"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(self, _: &'static str, _: u32, variant: &'static str, _: usize) -> Result<Compound<'a>> {
        self.variant_of(variant, b'[', b"]}")
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>> {
        self.out.push(b'{');
        Ok(Compound::new(self.out, b"}"))
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'a>> {
        if RAW_TOKENS.contains(&name) {
            return Ok(Compound {
                out: self.out,
                first: true,
                close: b"",
                raw: true,
            });
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>> {
        self.variant_of(variant, b'{', b"}}")
    }
}

/// A sequence, map, struct or variant being written: what comes between its brackets, and the
/// brackets that close it.
struct Compound<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    close: &'static [u8],
    /// `serde_json`'s raw JSON text (see [`RAW_TOKENS`]).
    raw: bool,
}

impl<'a> Compound<'a> {
    fn new(out: &'a mut Vec<u8>, close: &'static [u8]) -> Self {
        Compound {
            out,
            first: true,
            close,
            raw: false,
        }
    }

    fn comma(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.comma();
        value.serialize(Writer { out: &mut *self.out })
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<()> {
        if self.raw {
            return if RAW_TOKENS.contains(&key) {
                value
                    .serialize(StrOnly {
                        out: &mut *self.out,
                        raw: true,
                    })
                    .map_err(|NotStr| ser::Error::custom("invalid raw JSON value"))
            } else {
                Err(ser::Error::custom("invalid raw JSON value"))
            };
        }
        self.comma();
        write_str(self.out, key)?;
        self.out.push(b':');
        value.serialize(Writer { out: &mut *self.out })
    }

    fn close(self) -> Result<()> {
        self.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// The `serde` traits of a sequence's or a struct's parts, each one method and `end`.
macro_rules! compound {
    ($($trait:ident: $method:ident($($key:ident: $key_ty:ty)?) => $via:ident;)*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = serde_json::Error;

            fn $method<T: Serialize + ?Sized>(&mut self, $($key: $key_ty,)? value: &T) -> Result<()> {
                self.$via($($key,)? value)
            }

            fn end(self) -> Result<()> {
                self.close()
            }
        }
    )*};
}

compound! {
    SerializeSeq: serialize_element() => element;
    SerializeTuple: serialize_element() => element;
    SerializeTupleStruct: serialize_field() => element;
    SerializeTupleVariant: serialize_field() => element;
    SerializeStruct: serialize_field(key: &'static str) => field;
    SerializeStructVariant: serialize_field(key: &'static str) => field;
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.comma();
        let mark = self.out.len();
        let key_str = StrOnly {
            out: &mut *self.out,
            raw: false,
        };
        match key.serialize(key_str) {
            Ok(()) => {}
            Err(NotStr) => {
                self.out.truncate(mark);
                // Written by `serde_json` as the first key of a map of its own (`{` then the
                // key), whose `{` is left out: its rules for keys and its errors, as they are.
                let mut buf = Vec::new();
                {
                    let mut json = serde_json::Serializer::new(&mut buf);
                    let mut map = (&mut json).serialize_map(None)?;
                    ser::SerializeMap::serialize_key(&mut map, key)?;
                }
                self.out.extend_from_slice(buf.get(1..).unwrap_or_default());
            }
        }
        self.out.push(b':');
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(Writer { out: &mut *self.out })
    }

    fn end(self) -> Result<()> {
        self.close()
    }
}

/// A map key that is not a plain string: left to `serde_json`.
#[derive(Debug)]
struct NotStr;

impl std::fmt::Display for NotStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a string key")
    }
}

impl std::error::Error for NotStr {}

impl ser::Error for NotStr {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        NotStr
    }
}

/// Writes a string (directly or through newtypes) that needs no escaping, quoted (a map key) or
/// as it is (`raw`: JSON text); anything else is [`NotStr`], with nothing written.
struct StrOnly<'a> {
    out: &'a mut Vec<u8>,
    raw: bool,
}

macro_rules! not_str {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, _v: $ty) -> std::result::Result<(), NotStr> {
            Err(NotStr)
        }
    )*};
}

impl ser::Serializer for StrOnly<'_> {
    type Ok = ();
    type Error = NotStr;
    type SerializeSeq = ser::Impossible<(), NotStr>;
    type SerializeTuple = ser::Impossible<(), NotStr>;
    type SerializeTupleStruct = ser::Impossible<(), NotStr>;
    type SerializeTupleVariant = ser::Impossible<(), NotStr>;
    type SerializeMap = ser::Impossible<(), NotStr>;
    type SerializeStruct = ser::Impossible<(), NotStr>;
    type SerializeStructVariant = ser::Impossible<(), NotStr>;

    fn serialize_str(self, v: &str) -> std::result::Result<(), NotStr> {
        if self.raw {
            self.out.extend_from_slice(v.as_bytes());
            return Ok(());
        }
        if needs_escape(v.as_bytes()) {
            return Err(NotStr);
        }
        write_plain(self.out, v);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> std::result::Result<(), NotStr> {
        value.serialize(self)
    }

    not_str!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
             serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
             serialize_u128: u128, serialize_f32: f32, serialize_f64: f64, serialize_char: char,
             serialize_bytes: &[u8], serialize_unit_struct: &'static str);

    fn serialize_none(self) -> std::result::Result<(), NotStr> {
        Err(NotStr)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> std::result::Result<(), NotStr> {
        Err(NotStr)
    }

    fn serialize_unit(self) -> std::result::Result<(), NotStr> {
        Err(NotStr)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> std::result::Result<(), NotStr> {
        Err(NotStr)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), NotStr> {
        Err(NotStr)
    }

    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self::SerializeSeq, NotStr> {
        Err(NotStr)
    }

    fn serialize_tuple(self, _: usize) -> std::result::Result<Self::SerializeTuple, NotStr> {
        Err(NotStr)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleStruct, NotStr> {
        Err(NotStr)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, NotStr> {
        Err(NotStr)
    }

    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self::SerializeMap, NotStr> {
        Err(NotStr)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> std::result::Result<Self::SerializeStruct, NotStr> {
        Err(NotStr)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, NotStr> {
        Err(NotStr)
    }

    fn collect_str<T: std::fmt::Display + ?Sized>(self, _value: &T) -> std::result::Result<(), NotStr> {
        Err(NotStr)
    }
}
#[cfg(test)]
mod tests {
    use super::{from_slice, to_writer};
    use serde::Serialize;
    use std::collections::{BTreeMap, HashMap};

    /// Ours and serde_json's, as bytes (or the error's text).
    fn both<T: Serialize + ?Sized>(value: &T) -> (Result<Vec<u8>, String>, Result<Vec<u8>, String>) {
        let mut ours = Vec::new();
        let ours = to_writer(&mut ours, value).map(|()| ours).map_err(|e| e.to_string());
        (ours, serde_json::to_vec(value).map_err(|e| e.to_string()))
    }

    fn same<T: Serialize + ?Sized>(value: &T) {
        let (ours, theirs) = both(value);
        assert_eq!(
            ours.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
            theirs.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
        );
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize, PartialEq, Eq, Hash)]
    struct Newtype(String);

    #[derive(Serialize)]
    struct Pair(i8, Option<u16>);

    #[derive(Serialize)]
    enum Kinds {
        Plain,
        Wrapped(u32),
        Two(bool, char),
        Named {
            a: f64,
            #[serde(rename = "b\"q")]
            b: (),
        },
    }

    #[derive(Serialize)]
    #[serde(tag = "kind")]
    enum Tagged {
        One { x: u8 },
        Other(Inner),
    }

    #[derive(Serialize)]
    #[serde(tag = "t", content = "c")]
    enum Adjacent {
        A(String),
        B,
    }

    #[derive(Serialize)]
    #[serde(untagged)]
    enum Untagged {
        N(i64),
        S(String),
    }

    #[derive(Serialize)]
    struct Inner {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        gone: Option<u8>,
    }

    #[derive(Serialize)]
    struct Outer {
        id: uuid::Uuid,
        #[serde(flatten)]
        inner: Inner,
        #[serde(flatten)]
        extra: BTreeMap<String, serde_json::Value>,
        empty: Vec<u8>,
        empty_map: BTreeMap<u8, u8>,
        nested: Vec<Vec<Option<Kinds>>>,
        tuple: (u8, &'static str, f32),
        bytes: Bytes,
    }

    /// Serialised with `serialize_bytes`.
    struct Bytes(&'static [u8]);

    impl Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// Written through `collect_str`.
    struct Shown(&'static str);

    impl Serialize for Shown {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("<{}>", self.0))
        }
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let strings = [
            "",
            "plain",
            "with \"quotes\"",
            "back\\slash",
            "tab\tnew\nline\r\u{8}\u{c}",
            "\u{0}\u{1f}\u{7f}",
            "café ☕ 𝄞",
            "exactly8",
            "sixteen bytes!!!",
            "seventeen bytes!\"",
            "\"",
            "1234567\n",
        ];
        for s in strings {
            same(s);
            same(&Newtype(s.to_owned()));
            same(&Shown(s));
            same(&BTreeMap::from([(s, s)]));
        }
        for c in ['a', '"', '\\', '\n', '\u{0}', 'é', '𝄞'] {
            same(&c);
            same(&BTreeMap::from([(c, 1)]));
        }
        same(&(true, false, (), Unit));
        same(&(
            i8::MIN,
            i16::MIN,
            i32::MIN,
            i64::MIN,
            i128::MIN,
            u8::MAX,
            u16::MAX,
            u32::MAX,
            u64::MAX,
            u128::MAX,
        ));
        same(&(0i32, -1i64, 7u128));
        for f in [
            0.0,
            -0.0,
            1.5,
            -2.25e-300,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            same(&f);
            same(&(f as f32));
        }
        same(&vec![
            Kinds::Plain,
            Kinds::Wrapped(3),
            Kinds::Two(true, 'x'),
            Kinds::Named { a: 0.5, b: () },
        ]);
        same(&vec![
            Tagged::One { x: 1 },
            Tagged::Other(Inner {
                name: "n".into(),
                gone: Some(2),
            }),
        ]);
        same(&vec![Adjacent::A("a".into()), Adjacent::B]);
        same(&vec![Untagged::N(-5), Untagged::S("s".into())]);
        same(&Pair(-1, None));
        same(&Pair(1, Some(2)));
        same(&Outer {
            id: uuid::Uuid::from_u64_pair(1, 2),
            inner: Inner {
                name: "inner \"name\"".into(),
                gone: None,
            },
            extra: BTreeMap::from([("x".to_owned(), serde_json::json!({"a": [1, 2.5, null, "s\n"], "b": {}}))]),
            empty: vec![],
            empty_map: BTreeMap::new(),
            nested: vec![vec![None, Some(Kinds::Plain)], vec![]],
            tuple: (1, "t", 0.1),
            bytes: Bytes(b"\x00\xff"),
        });
        // Map keys: serde_json's rules (integers and bools quoted, unit variants by name), and
        // its errors for keys it refuses.
        same(&BTreeMap::from([(1u8, "a"), (200, "b")]));
        same(&BTreeMap::from([(-3i128, 0)]));
        same(&BTreeMap::from([(true, 1), (false, 2)]));
        same(&HashMap::from([(Newtype("k".into()), 1)]));
        #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
        enum Key {
            Left,
        }
        same(&BTreeMap::from([(Key::Left, 1)]));
        same(&BTreeMap::from([(vec![1], 1)]));
        same(&BTreeMap::from([((), 1)]));
        same(&BTreeMap::from([(Some("k"), 1)]));
        same(&serde_json::json!({"a": {"b": [true, {"c\u{1}": "d"}]}, "e": -0.0, "f": 18446744073709551615u64}));
        // A failing value part-way: the same error.
        same(&vec![serde_json::json!(1), serde_json::json!({"k": f64::NAN})]);
    }

    #[test]
    fn finds_every_byte_that_needs_escaping_at_every_place() {
        for len in 0..=24 {
            let plain = vec![b'a'; len];
            assert!(!super::needs_escape(&plain));
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = plain.clone();
                    bytes[at] = b;
                    let expected = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(super::needs_escape(&bytes), expected, "byte {b:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn writes_raw_json_values_as_they_are() {
        let raw = serde_json::value::RawValue::from_string(r#"{"pre": [1, 2 ],"x":"\n"}"#.to_owned()).expect("raw");
        same(&raw);
        same(&vec![Some(&raw), None]);
        same(&BTreeMap::from([("k", &raw)]));
        /// What serde_json's `Number` writes with its `arbitrary_precision` feature.
        struct Precise(&'static str);
        impl Serialize for Precise {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut st = s.serialize_struct("$serde_json::private::Number", 1)?;
                st.serialize_field("$serde_json::private::Number", self.0)?;
                st.end()
            }
        }
        let mut out = Vec::new();
        to_writer(&mut out, &[Precise("1.000000000000000000001")]).expect("written");
        assert_eq!(out, b"[1.000000000000000000001]");
    }

    proptest::proptest! {
        #[test]
        fn any_strings_and_maps_are_written_as_serde_json_writes_them(
            s in ".*",
            keys in proptest::collection::btree_map(".*", proptest::collection::vec(proptest::num::f64::ANY, 0..3), 0..4),
            ints in proptest::collection::vec(proptest::num::i64::ANY, 0..4),
        ) {
            let (ours, theirs) = both(&(&s, &keys, &ints));
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Doc {
        title: String,
        size: u64,
    }

    #[test]
    fn reads_what_serde_json_reads_and_fails_as_it_fails() {
        let cases: &[&[u8]] = &[
            br#"{"title":"caf\u00e9 \"x\"","size":3}"#,
            "{\"title\":\"café\",\"size\":3}".as_bytes(),
            br#"{"title":"x","size":-1}"#,
            br#"{"title":"x""#,
            b"{\"title\":\"\xff\",\"size\":1}",
            b"{\"size\":1,\"title\":\"a\xc3\"}",
            b"\xff{}",
            br#"{"title":"x","size":1} trailing"#,
            b"",
        ];
        for case in cases {
            let ours = from_slice::<Doc>(case).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Doc>(case).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(case));
        }
    }
}
