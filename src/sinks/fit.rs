//! Fitting a record to its topic's message size, so that no input that passed the input limits can stop ingestion.
//!
//! JSON escaping can make an output up to six times larger than the input it
//! embeds (`\u0001` for one control byte), and a send refused by the producer
//! fails the batch: the daemon stops, and the restart re-reads the same record.
//! So before sending, an enriched event whose `raw_data` makes it too large
//! keeps only a prefix of it (marked), an alert has its longest strings cut
//! (listed in `truncated_fields`), and a long key is replaced by its hash.

use std::borrow::Cow;

use serde_json::Value;
use sha2::Digest;

use super::EnrichedEvent;

/// Keys longer than this are sent as `sha256:<hex>` of the key: the same
/// identity still lands on the same partition, without a megabyte per record.
pub const MAX_KEY_BYTES: usize = 1024;

/// A string is never cut below this many bytes; an alert still too large when
/// every longer string is this short is not sent.
const MIN_CUT_BYTES: usize = 256;

/// How many cuts an alert may take before it is given up.
const MAX_CUTS: usize = 64;

/// The key to send: `key` itself, or `sha256:<hex>` of it when longer than [`MAX_KEY_BYTES`].
pub fn key(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_KEY_BYTES {
        return Cow::Borrowed(key);
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut hashed = String::with_capacity(7 + 64);
    hashed.push_str("sha256:");
    for byte in digest {
        hashed.push_str(&format!("{byte:02x}"));
    }
    Cow::Owned(hashed)
}

/// Bytes one byte of a string takes inside a JSON string, as serde_json writes it.
fn escaped_len(byte: u8) -> usize {
    match byte {
        b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
        0x00..=0x1f => 6,
        _ => 1,
    }
}

/// Bytes `text` takes as a JSON string, quotes included.
pub fn json_string_len(text: &str) -> usize {
    2 + text.bytes().map(escaped_len).sum::<usize>()
}

/// The longest prefix of `text`, cut on a character boundary, whose JSON string
/// (quotes included) takes at most `budget` bytes.
pub fn json_prefix(text: &str, budget: usize) -> &str {
    let mut used = 2;
    let mut end = 0;
    for (i, byte) in text.bytes().enumerate() {
        used += escaped_len(byte);
        if used > budget {
            break;
        }
        end = i + 1;
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What fitting did to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fitted {
    /// It fit as it was.
    Whole,
    /// It fits once cut (the cut is marked in the record).
    Cut,
    /// It cannot fit.
    TooLarge,
}

/// Fits a serialized enriched event (`buffer`, the JSON of `record`) to `limit`
/// bytes, cutting its `raw_data` if need be; `buffer` then holds the record to send.
pub fn enriched<'a>(
    record: &mut EnrichedEvent<'a>,
    buffer: &mut Vec<u8>,
    limit: usize,
) -> Result<Fitted, serde_json::Error> {
    if buffer.len() <= limit {
        return Ok(Fitted::Whole);
    }
    let Some(raw) = record.raw_data() else {
        return Ok(Fitted::TooLarge);
    };
    // Everything but the raw_data string, plus the marks of the cut.
    let rest = buffer.len() - json_string_len(raw);
    let marks =
        r#","raw_data_truncated":true,"raw_data_bytes":"#.len() + raw.len().to_string().len();
    let Some(budget) = limit.checked_sub(rest + marks).filter(|b| *b >= 2) else {
        return Ok(Fitted::TooLarge);
    };
    record.cut_raw_data(json_prefix(raw, budget));
    buffer.clear();
    serde_json::to_writer(&mut *buffer, &*record)?;
    Ok(if buffer.len() <= limit {
        Fitted::Cut
    } else {
        Fitted::TooLarge
    })
}

/// Fits a serialized JSON object (`buffer`) to `limit` bytes by cutting its
/// longest strings, each to a prefix, and listing their JSON pointers in a
/// top-level `truncated_fields`; `buffer` then holds the record to send.
pub fn object(buffer: &mut Vec<u8>, limit: usize) -> Result<Fitted, serde_json::Error> {
    if buffer.len() <= limit {
        return Ok(Fitted::Whole);
    }
    let mut value: Value = serde_json::from_slice(buffer)?;
    if !value.is_object() {
        return Ok(Fitted::TooLarge);
    }
    let mut cut: Vec<String> = Vec::new();
    for _ in 0..MAX_CUTS {
        let Some((pointer, len)) = longest_string(&value) else {
            return Ok(Fitted::TooLarge);
        };
        if len <= MIN_CUT_BYTES {
            return Ok(Fitted::TooLarge);
        }
        // Room for the pointer in `truncated_fields` too (quotes, comma, and the
        // field's name the first time).
        let listed = if cut.contains(&pointer) {
            0
        } else {
            json_string_len(&pointer) + 1 + if cut.is_empty() { 21 } else { 0 }
        };
        let excess = buffer.len() + listed - limit;
        let budget = len.saturating_sub(excess).max(MIN_CUT_BYTES);
        if let Some(Value::String(text)) = value.pointer_mut(&pointer) {
            let keep = json_prefix(text, budget).len();
            text.truncate(keep);
        }
        if !cut.contains(&pointer) {
            cut.push(pointer);
        }
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "truncated_fields".into(),
                Value::Array(cut.iter().cloned().map(Value::String).collect()),
            );
        }
        buffer.clear();
        serde_json::to_writer(&mut *buffer, &value)?;
        if buffer.len() <= limit {
            return Ok(Fitted::Cut);
        }
    }
    Ok(Fitted::TooLarge)
}

/// The JSON pointer and escaped length of the longest string in `value`
/// (the `truncated_fields` list itself excluded).
fn longest_string(value: &Value) -> Option<(String, usize)> {
    let mut best: Option<(String, usize)> = None;
    let mut stack: Vec<(String, &Value)> = vec![(String::new(), value)];
    while let Some((pointer, value)) = stack.pop() {
        match value {
            Value::String(text) => {
                let len = json_string_len(text);
                if best.as_ref().is_none_or(|(_, b)| len > *b) {
                    best = Some((pointer, len));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    stack.push((format!("{pointer}/{i}"), item));
                }
            }
            Value::Object(fields) => {
                for (name, item) in fields {
                    if pointer.is_empty() && name == "truncated_fields" {
                        continue;
                    }
                    let name = name.replace('~', "~0").replace('/', "~1");
                    stack.push((format!("{pointer}/{name}"), item));
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_stay_and_long_ones_become_their_hash() {
        let short = "app:reports-bot";
        assert!(matches!(key(short), Cow::Borrowed(k) if k == short));
        let long = format!("gateway_consumer:{}", "a".repeat(2000));
        let hashed = key(&long);
        assert!(hashed.starts_with("sha256:"), "{hashed}");
        assert_eq!(hashed.len(), 7 + 64);
        assert_eq!(hashed, key(&long), "the same key, the same hash");
        assert_eq!(key(&"a".repeat(MAX_KEY_BYTES)).len(), MAX_KEY_BYTES);
    }

    #[test]
    fn escaped_lengths_match_serde_json() {
        for text in [
            "plain",
            "quote \" backslash \\ tab \t newline \n",
            "\u{1}\u{2}\u{1f}\u{7f}",
            "é ü 漢字 🙂",
            "",
        ] {
            let written = serde_json::to_string(text).expect("json");
            assert_eq!(json_string_len(text), written.len(), "{text:?}");
        }
    }

    #[test]
    fn a_prefix_fits_its_budget_and_ends_on_a_character() {
        let text = "ab\u{1}é🙂cd";
        for budget in 0..40 {
            let prefix = json_prefix(text, budget);
            assert!(text.starts_with(prefix));
            let written = serde_json::to_string(prefix).expect("json");
            assert!(written.len() <= budget.max(2), "{budget}: {written}");
            // One more character would not have fit.
            if let Some(next) = text[prefix.len()..].chars().next() {
                let longer = &text[..prefix.len() + next.len_utf8()];
                assert!(json_string_len(longer) > budget, "{budget}");
            }
        }
    }

    #[test]
    fn an_object_too_large_has_its_longest_strings_cut_and_listed() {
        let original = serde_json::json!({
            "id": "a1",
            "identity": "\u{1}".repeat(10_000),
            "summary": format!("seen {}", "x".repeat(5_000)),
            "evidence": {"samples": ["s".repeat(3_000)]},
        });
        let mut buffer = serde_json::to_vec(&original).expect("json");
        assert!(buffer.len() > 60_000);
        assert_eq!(object(&mut buffer, 8_000).expect("fit"), Fitted::Cut);
        assert!(buffer.len() <= 8_000, "{}", buffer.len());
        let fitted: Value = serde_json::from_slice(&buffer).expect("json");
        assert_eq!(fitted["id"], "a1", "short fields are kept");
        let cut = fitted["truncated_fields"].as_array().expect("marked");
        assert!(cut.contains(&Value::from("/identity")), "{cut:?}");
        let identity = fitted["identity"].as_str().expect("kept, cut");
        assert!(
            !identity.is_empty() && original["identity"].as_str().unwrap().starts_with(identity)
        );

        let mut whole = br#"{"id":"a1"}"#.to_vec();
        assert_eq!(object(&mut whole, 100).expect("fit"), Fitted::Whole);
        // Many short strings cannot be cut far enough: the record is given up.
        let many = Value::Array(
            (0..1000)
                .map(|i| Value::from(format!("{i:0>200}")))
                .collect(),
        );
        let mut buffer = serde_json::to_vec(&serde_json::json!({ "many": many })).expect("json");
        assert_eq!(object(&mut buffer, 8_000).expect("fit"), Fitted::TooLarge);
    }
}
