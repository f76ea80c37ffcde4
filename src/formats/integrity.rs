//! Is a downloaded file what its name says, and is a cached one still what was downloaded?
//!
//! - [`check_body`]: before a download is moved into place, its bytes must be the kind of file its
//!   name promises (zip archive for `.ckpt`/`.pth.tar`, a consistent header for `.safetensors`, a
//!   pickle for `.pkl`, text for `.yaml`); a web page is never accepted (servers answer 200 with an
//!   HTML error or login page).
//! - SHA-256: computed for every download and, when the server states the file's digest (Hugging
//!   Face does for large files), compared with it. It is kept beside the cached file as
//!   `<file>.sha256` (`sha256sum` format), so a later run re-checks the file cheaply (its length
//!   and kind on every use, the full digest in `retina info`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Check that `len` bytes read from `reader` are the kind of file `file_name` says.
pub fn check_body<R: Read + Seek>(file_name: &str, reader: &mut R, len: u64) -> std::result::Result<(), String> {
    let mut head = Vec::with_capacity(512);
    reader
        .seek(SeekFrom::Start(0))
        .and_then(|_| (&mut *reader).take(512).read_to_end(&mut head))
        .map_err(|e| format!("cannot read the download ({e})"))?;
    if looks_like_html(&head) {
        return Err("the server sent a web page (HTML) instead of the file".into());
    }
    if len == 0 {
        return Err("the server sent an empty file".into());
    }
    let name = file_name.to_ascii_lowercase();
    if name.ends_with(".ckpt") || name.ends_with(".pth.tar") || name.ends_with(".pth") || name.ends_with(".pt") {
        if !super::torch::is_zip(&head) {
            return Err("not a zip archive, which every torch checkpoint is".into());
        }
        super::torch::check_end_of_archive(reader, len)?;
    } else if name.ends_with(".safetensors") {
        reader.seek(SeekFrom::Start(0)).map_err(|e| format!("cannot read the download ({e})"))?;
        let header = super::safetensors::read_header(reader, len)?;
        super::safetensors::check_header(&header, len)?;
    } else if name.ends_with(".pkl") {
        if head.first() != Some(&0x80) {
            return Err("not a pickle (protocol 2 or later)".into());
        }
    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
        // The head may cut a multi-byte character: only its last 3 bytes may be incomplete.
        let valid_up_to = std::str::from_utf8(&head).map_or_else(|e| e.valid_up_to(), str::len);
        if head.contains(&0) || valid_up_to + 3 < head.len() {
            return Err("not a text file".into());
        }
    }
    Ok(())
}

/// `<!DOCTYPE html`, `<html` or `<head` at the start (after whitespace and a byte-order mark).
fn looks_like_html(head: &[u8]) -> bool {
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let start = text.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(text.len());
    let lower: Vec<u8> = text[start..].iter().take(16).map(u8::to_ascii_lowercase).collect();
    [&b"<!doctype html"[..], b"<html", b"<head", b"<!--"].iter().any(|tag| lower.starts_with(tag))
}

/// The SHA-256 of a file, as 64 lowercase hex digits.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = super::open_regular_file(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::file(path, format!("cannot read ({e})")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 of some bytes, as 64 lowercase hex digits.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 as a server states it in an `ETag` / `X-Linked-Etag` header (`"<64 hex>"`, maybe
/// weak `W/"..."`); `None` for any other entity tag (those are not digests).
pub fn sha256_from_etag(etag: &str) -> Option<String> {
    let tag = etag.trim().trim_start_matches("W/").trim_matches('"');
    (tag.len() == 64 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then(|| tag.to_ascii_lowercase())
}

/// `<file>.sha256` beside a cached file.
pub fn digest_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    file.with_file_name(name)
}

/// What the sidecar of a cached file says: its digest and length.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedDigest {
    pub sha256: String,
    pub len: u64,
}

/// Write `<digest>  <file name>` and the length (a second line `# bytes N`) beside `file`.
pub fn record_digest(file: &Path, digest: &RecordedDigest) -> Result<()> {
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let text = format!("{}  {name}\n# bytes {}\n", digest.sha256, digest.len);
    let path = digest_path(file);
    std::fs::write(&path, text).map_err(|e| Error::file(&path, format!("cannot write ({e})")))
}

/// The recorded digest of a cached file, if a readable sidecar is there.
pub fn recorded_digest(file: &Path) -> Option<RecordedDigest> {
    let mut text = String::new();
    File::open(digest_path(file)).ok()?.take(4096).read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    let sha256 = lines.next()?.split_whitespace().next()?.to_string();
    let len = lines.next()?.strip_prefix("# bytes ")?.trim().parse().ok()?;
    (sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())).then_some(RecordedDigest { sha256, len })
}

/// The one-line advice for a cached file that turned out broken.
pub fn broken_cache_advice(file: &Path) -> String {
    format!("download it again with --refetch, or delete it: rm {}", file.display())
}

/// Cheap check of a cached file on every use: its length matches the recorded one and its bytes
/// are the kind its name says.
pub fn check_cached(file: &Path) -> Result<()> {
    let broken = |problem: String| {
        Error::file(file, format!("the cached download is damaged ({problem}); {}", broken_cache_advice(file)))
    };
    let mut reader = super::open_regular_file(file)?;
    let len = reader.metadata().map_err(|e| Error::file(file, format!("cannot read ({e})")))?.len();
    if let Some(recorded) = recorded_digest(file) {
        if recorded.len != len {
            return Err(broken(format!("{len} bytes, {} when downloaded", recorded.len)));
        }
    }
    let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
    check_body(&name, &mut reader, len).map_err(broken)
}

/// Full check of a cached file: its SHA-256, compared with the recorded one when there is one.
/// Returns the digest and whether it was compared.
pub fn verify_cached(file: &Path) -> Result<(String, bool)> {
    let digest = sha256_file(file)?;
    match recorded_digest(file) {
        Some(recorded) if recorded.sha256 != digest => Err(Error::file(
            file,
            format!(
                "the cached download is damaged (SHA-256 {digest}, {} when downloaded); {}",
                recorded.sha256,
                broken_cache_advice(file)
            ),
        )),
        Some(_) => Ok((digest, true)),
        None => Ok((digest, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn bodies_of_the_wrong_kind_are_refused() {
        let html = b"\n  <!DOCTYPE html><html><body>Not found</body></html>";
        for name in ["model.ckpt", "model.safetensors", "config_00000.yaml", "x.bin"] {
            let error = check_body(name, &mut Cursor::new(html), html.len() as u64).unwrap_err();
            assert!(error.contains("web page"), "{name}: {error}");
        }
        let zip_without_end = b"PK\x03\x04 and then nothing";
        let error = check_body("m.ckpt", &mut Cursor::new(zip_without_end), zip_without_end.len() as u64).unwrap_err();
        assert!(error.contains("end-of-archive"), "{error}");
        assert!(check_body("m.ckpt", &mut Cursor::new(b"{}"), 2).unwrap_err().contains("zip"));
        assert!(check_body("m.safetensors", &mut Cursor::new(b"\x02\0\0\0\0\0\0\0{}x"), 11).is_err());
        assert!(check_body("m.safetensors", &mut Cursor::new(b"\x02\0\0\0\0\0\0\0{}"), 10).is_ok());
        assert!(check_body("d.pkl", &mut Cursor::new(b"\x80\x02N."), 4).is_ok());
        assert!(check_body("d.pkl", &mut Cursor::new(b"N."), 2).is_err());
        assert!(check_body("c.yaml", &mut Cursor::new(b"a: 1\n"), 5).is_ok());
        assert!(check_body("c.yaml", &mut Cursor::new(b"a\0b"), 3).is_err());
        assert!(check_body("x.bin", &mut Cursor::new(b""), 0).is_err());
    }

    #[test]
    fn etags_that_are_digests() {
        let sha = "a".repeat(64);
        assert_eq!(sha256_from_etag(&format!("\"{sha}\"")), Some(sha.clone()));
        assert_eq!(sha256_from_etag(&format!("W/\"{}\"", sha.to_uppercase())), Some(sha));
        assert_eq!(sha256_from_etag("\"5d41402abc4b2a76b9719d911017c592\""), None);
        assert_eq!(sha256_from_etag("\"1234-abcd\""), None);
        // SHA-256 of "abc" (FIPS 180-2 example).
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
