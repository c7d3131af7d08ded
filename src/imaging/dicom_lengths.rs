//! A check of a DICOM file's declared element lengths before it is parsed.
//!
//! dicom-parser 0.10 allocates and zero-fills each value at its *declared* length before
//! reading it, so a 26 kB file whose header declares a 2 GB element made the server touch 2 GB
//! (found by the `decode` fuzz target). Every value must lie within the bytes that follow it,
//! so this walks the element headers (file meta, then the data set in its transfer syntax;
//! sequences, items and encapsulated fragments included, and what follows the pixel data,
//! which the parser reads too) and refuses a length that reaches past the end before anything
//! is allocated. It reads headers only, in one pass.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use crate::core::error::DicomError;

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
const UNDEFINED: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    ExplicitLe,
    ExplicitBe,
    ImplicitLe,
}

/// Checks `body` (starting at `DICM`); a deflated data set is inflated up to `max_inflated`
/// bytes for the check.
pub fn check_declared_lengths(body: &[u8], max_inflated: u64) -> Result<(), DicomError> {
    // File meta, explicit VR little endian, read as dicom-object reads it: first the group
    // length (0002,0000), then elements of any group until that many bytes are consumed.
    let mut pos = 4;
    let Some(first) = header(body, pos, Syntax::ExplicitLe) else {
        return Ok(()); // too short for a header: the parser says so
    };
    if first.tag != Tag(0x0002, 0x0000) || first.len != 4 {
        return Ok(()); // the parser refuses a file meta without its group length
    }
    let Some(group_length) = u32_at(body, pos + first.size, false) else {
        return Ok(());
    };
    pos += first.size + 4;
    let meta_start = pos;
    let mut transfer_syntax = String::new();
    while pos - meta_start < group_length as usize {
        let Some(h) = header(body, pos, Syntax::ExplicitLe) else {
            return Ok(());
        };
        let start = pos + h.size;
        if h.len == UNDEFINED {
            return Ok(()); // the parser refuses undefined lengths in the file meta
        }
        let len = within(body, start, &h)?;
        if h.tag == Tag(0x0002, 0x0010) {
            // Trimmed as dicom-object trims it: NULs and any whitespace (a fuzzed file ended
            // its UID with "\0\x0C\0", which the parser still reads as implicit VR).
            transfer_syntax = String::from_utf8_lossy(&body[start..start + len])
                .trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string();
        }
        pos = start + len;
    }
    let rest = &body[pos..];
    match transfer_syntax.as_str() {
        DEFLATED_LE => {
            let inflated = inflate_prefix(rest, max_inflated)?;
            walk(&inflated, Syntax::ExplicitLe)
        }
        IMPLICIT_LE => walk(rest, Syntax::ImplicitLe),
        EXPLICIT_BE => walk(rest, Syntax::ExplicitBe),
        _ => walk(rest, Syntax::ExplicitLe),
    }
}

/// All that a raw deflate stream yields, up to its end or the first corrupt symbol. The parser
/// reads a broken stream up to the break (how far depends on its read sizes), so the check
/// takes everything before it: whatever the parser can see, the check has seen.
fn inflate_prefix(deflated: &[u8], max_inflated: u64) -> Result<Vec<u8>, DicomError> {
    let mut inflater = flate2::Decompress::new(false);
    let mut out = Vec::new();
    loop {
        out.reserve(64 * 1024);
        let consumed = inflater.total_in() as usize;
        let before = out.len();
        let status = inflater.decompress_vec(
            &deflated[consumed.min(deflated.len())..],
            &mut out,
            flate2::FlushDecompress::None,
        );
        if out.len() as u64 > max_inflated {
            return Err(DicomError::Parse(
                format!(
                    "the deflated data set inflates to more than {} MiB",
                    max_inflated >> 20
                )
                .into(),
            ));
        }
        let progressed = out.len() > before || inflater.total_in() as usize > consumed;
        match status {
            Ok(flate2::Status::Ok | flate2::Status::BufError) if progressed => continue,
            _ => return Ok(out),
        }
    }
}

struct Header {
    tag: Tag,
    vr: Option<VR>,
    len: u32,
    size: usize,
}

fn u16_at(b: &[u8], at: usize, big: bool) -> Option<u16> {
    let v: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(v)
    } else {
        u16::from_le_bytes(v)
    })
}

fn u32_at(b: &[u8], at: usize, big: bool) -> Option<u32> {
    let v: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(v)
    } else {
        u32::from_le_bytes(v)
    })
}

/// The element header at `pos`, if the bytes hold one.
fn header(b: &[u8], pos: usize, syntax: Syntax) -> Option<Header> {
    let big = syntax == Syntax::ExplicitBe;
    let tag = Tag(u16_at(b, pos, big)?, u16_at(b, pos + 2, big)?);
    if tag.0 == 0xFFFE || syntax == Syntax::ImplicitLe {
        // Items and delimiters have no VR in any syntax.
        return Some(Header {
            tag,
            vr: None,
            len: u32_at(b, pos + 4, big)?,
            size: 8,
        });
    }
    // An unknown VR is read as UN (4-byte length), as dicom-encoding does.
    let vr = Some(VR::from_binary([*b.get(pos + 4)?, *b.get(pos + 5)?]).unwrap_or(VR::UN));
    let long = matches!(
        vr,
        Some(
            VR::OB
                | VR::OD
                | VR::OF
                | VR::OL
                | VR::OV
                | VR::OW
                | VR::SQ
                | VR::SV
                | VR::UC
                | VR::UN
                | VR::UR
                | VR::UT
                | VR::UV
        )
    );
    if long {
        Some(Header {
            tag,
            vr,
            len: u32_at(b, pos + 8, big)?,
            size: 12,
        })
    } else {
        Some(Header {
            tag,
            vr,
            len: u32::from(u16_at(b, pos + 6, big)?),
            size: 8,
        })
    }
}

/// The header's defined length, if the value fits in what follows `start`.
fn within(b: &[u8], start: usize, h: &Header) -> Result<usize, DicomError> {
    let remaining = b.len().saturating_sub(start) as u64;
    if u64::from(h.len) > remaining {
        return Err(DicomError::DeclaredBeyondEnd {
            group: h.tag.0,
            element: h.tag.1,
            declared: u64::from(h.len),
            remaining,
        });
    }
    Ok(h.len as usize)
}

/// What the walk is inside of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inside {
    /// A sequence or an item (with its end, when its length is defined).
    Nested(Option<usize>),
    /// Encapsulated pixel data: items are fragments, skipped whole.
    Fragments,
}

fn is_sequence(h: &Header, syntax: Syntax) -> bool {
    match h.vr {
        Some(VR::SQ) => true,
        // Implicit VR: the dictionary knows which elements are sequences; an unknown
        // element of undefined length is one too (PS3.5 7.5.1).
        None if syntax == Syntax::ImplicitLe => {
            h.len == UNDEFINED
                || StandardDataDictionary
                    .by_tag(h.tag)
                    .is_some_and(|e| e.vr() == VirtualVr::Exact(VR::SQ))
        }
        Some(VR::UN) => h.len == UNDEFINED,
        _ => false,
    }
}

fn walk(b: &[u8], syntax: Syntax) -> Result<(), DicomError> {
    let mut stack: Vec<Inside> = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        // Sequences and items of defined length end where they said.
        while let Some(Inside::Nested(Some(end))) = stack.last() {
            if pos >= *end {
                stack.pop();
            } else {
                break;
            }
        }
        let Some(h) = header(b, pos, syntax) else {
            return Ok(()); // a few trailing bytes: the parser decides
        };
        let start = pos + h.size;
        if h.tag.0 == 0xFFFE {
            match h.tag.1 {
                // An item: a fragment is skipped, a sequence item is walked into.
                0xE000 if stack.last() == Some(&Inside::Fragments) => {
                    pos = start + within(b, start, &h)?;
                }
                0xE000 => {
                    let end = if h.len == UNDEFINED {
                        None
                    } else {
                        Some(start + within(b, start, &h)?)
                    };
                    stack.push(Inside::Nested(end));
                    pos = start;
                }
                // The end of an undefined-length item or sequence.
                0xE00D | 0xE0DD => {
                    stack.pop();
                    pos = start;
                }
                _ => pos = start + within(b, start, &h)?,
            }
            continue;
        }
        if h.len == UNDEFINED {
            if is_sequence(&h, syntax) {
                stack.push(Inside::Nested(None));
            } else {
                // Encapsulated pixel data (or another undefined-length value).
                stack.push(Inside::Fragments);
            }
            pos = start;
            continue;
        }
        let len = within(b, start, &h)?;
        if is_sequence(&h, syntax) {
            stack.push(Inside::Nested(Some(start + len)));
            pos = start;
        } else {
            pos = start + len;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file body (from `DICM`) whose meta names `ts`, then `elements`.
    fn with_meta(ts: &[u8], elements: &[u8]) -> Vec<u8> {
        let mut meta = vec![0x02, 0x00, 0x10, 0x00, b'U', b'I'];
        meta.extend((ts.len() as u16).to_le_bytes());
        meta.extend(ts);
        let mut body = b"DICM".to_vec();
        body.extend([0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        body.extend((meta.len() as u32).to_le_bytes());
        body.extend(meta);
        body.extend(elements);
        body
    }

    fn explicit_le(elements: &[u8]) -> Vec<u8> {
        with_meta(b"1.2.840.10008.1.2.1\0", elements)
    }

    #[test]
    fn a_length_past_the_end_is_refused_before_parsing() {
        // (0010,0010) PN of 8 bytes: fits.
        let ok = explicit_le(&[
            0x10, 0, 0x10, 0, b'P', b'N', 8, 0, b'D', b'o', b'e', b'^', b'J', b'a', b'n', b'e',
        ]);
        assert!(check_declared_lengths(&ok, 1 << 20).is_ok());
        // (0009,0010) OB declaring 2 GB in a file of a few bytes.
        let mut huge = vec![0x09, 0, 0x10, 0, b'O', b'B', 0, 0];
        huge.extend(0x7F00_0000u32.to_le_bytes());
        huge.extend([0u8; 16]);
        match check_declared_lengths(&explicit_le(&huge), 1 << 20) {
            Err(DicomError::DeclaredBeyondEnd {
                group: 0x0009,
                declared: 0x7F00_0000,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn elements_inside_sequences_are_checked_too() {
        // (0008,1140) SQ, undefined length; an item of undefined length holding an element
        // that declares too much.
        let mut e = vec![
            0x08, 0, 0x40, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        e.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        e.extend([0x08, 0, 0x50, 0x11, b'U', b'I', 0xFF, 0x7F]);
        assert!(matches!(
            check_declared_lengths(&explicit_le(&e), 1 << 20),
            Err(DicomError::DeclaredBeyondEnd {
                group: 0x0008,
                element: 0x1150,
                ..
            })
        ));
    }

    #[test]
    fn a_deflated_data_set_is_checked_even_when_its_stream_breaks_off() {
        use std::io::Write;
        let mut element = vec![0x09, 0, 0x10, 0, b'O', b'B', 0, 0];
        element.extend(0xF000_0000u32.to_le_bytes());
        element.extend(vec![7u8; 4096]);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&element).unwrap();
        let mut deflated = z.finish().unwrap();
        deflated.truncate(deflated.len() / 2);
        let body = with_meta(b"1.2.840.10008.1.2.1.99", &deflated);
        assert!(matches!(
            check_declared_lengths(&body, 1 << 20),
            Err(DicomError::DeclaredBeyondEnd { group: 0x0009, .. })
        ));
    }

    #[test]
    fn an_unknown_vr_has_a_four_byte_length_as_the_parser_reads_it() {
        // Tag (0000,0000) with VR bytes 00 00 (zero padding): the parser reads it as UN, whose
        // 4-byte length here is 0xEB000000.
        let mut e = vec![0u8; 8];
        e.extend(0xEB00_0000u32.to_le_bytes());
        e.extend([0u8; 32]);
        assert!(matches!(
            check_declared_lengths(&explicit_le(&e), 1 << 20),
            Err(DicomError::DeclaredBeyondEnd {
                group: 0,
                element: 0,
                ..
            })
        ));
    }

    #[test]
    fn the_transfer_syntax_is_trimmed_as_the_parser_trims_it() {
        // "1.2.840.10008.1.2\0\x0C\0" is implicit VR to the parser; there, the element
        // (0000,4F54) declares 0xFFFFFF00 bytes.
        let mut e = vec![0x00, 0x00, 0x54, 0x4F];
        e.extend(0xFFFF_FF00u32.to_le_bytes());
        e.extend([0u8; 16]);
        assert!(matches!(
            check_declared_lengths(&with_meta(b"1.2.840.10008.1.2\0\x0C\0", &e), 1 << 20),
            Err(DicomError::DeclaredBeyondEnd {
                element: 0x4F54,
                ..
            })
        ));
    }
}
