//! Downloads against a small HTTP/1.1 server on 127.0.0.1 started by each test, and the registry.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use retina::formats::download::{
    cache_dir, cached_path, digest_line, fetch, openretina_cache_path, resolve_model, DownloadLimits, DownloadOptions,
    ModelLocation,
};
use retina::formats::integrity;
use retina::formats::registry::{self, ModelFormat};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/example_low_res/model.safetensors");

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("test fixture {FIXTURE} is missing ({e})"))
}

/// What the server does with one request (the n-th request gets the n-th reply; the last one repeats).
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// The file, or the asked-for part of it (206) when the request has a Range header.
    Serve,
    /// The whole file with 200, whatever the Range header says.
    ServeIgnoringRange,
    /// Headers announcing the whole (remaining) file, half of the remaining bytes, then hang up.
    DropHalfway,
    /// Headers announcing the remaining bytes, then hang up without sending any.
    DropBeforeBody,
    Status(u16),
    /// Headers announcing the whole (remaining) file, half of it, then silence with the connection open.
    StallHalfway,
    /// Headers announcing the whole file, then one byte every 50 ms.
    Drip,
    /// No length announced; bytes without end.
    Endless,
    /// 200 with an HTML page, with (true) or without (false) `Content-Type: text/html`.
    Html(bool),
    /// A redirect to `<path>?resolved` stating the body's SHA-256 (or a wrong one) in `X-Linked-Etag`,
    /// as Hugging Face does for large files.
    RedirectWithDigest(bool),
}

struct TestServer {
    base_url: String,
    /// The Range header of each request received so far (None when absent), in order.
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

impl TestServer {
    fn start(body: Vec<u8>, replies: Vec<Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let base_url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&ranges);
        let body = Arc::new(body);
        // The thread lives until the test process ends; every read on a connection has a timeout.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Some(range) = read_request(&stream) else { continue };
                let index = {
                    let mut recorded = recorded.lock().unwrap();
                    recorded.push(range.clone());
                    recorded.len() - 1
                };
                let reply = replies.get(index).or(replies.last()).copied().unwrap_or(Reply::Serve);
                // One thread per connection: a stalling reply must not hold up the next request.
                let body = Arc::clone(&body);
                std::thread::spawn(move || respond(stream, &body, reply, range.as_deref()));
            }
        });
        TestServer { base_url, ranges }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }
}

/// Reads the request head; returns its Range header (Some(None) when absent), None on a broken request.
fn read_request(stream: &TcpStream) -> Option<Option<String>> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut range = None;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some(range);
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    None
}

fn respond(mut stream: TcpStream, body: &[u8], reply: Reply, range: Option<&str>) -> std::io::Result<()> {
    let start: usize =
        range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.trim_end_matches('-').parse().ok()).unwrap_or(0);
    let head = |status: &str, extra: String, length: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n{extra}\r\n")
    };
    let (head, sent) = match reply {
        Reply::StallHalfway | Reply::Drip | Reply::Endless | Reply::Html(_) | Reply::RedirectWithDigest(_) => {
            return respond_hostile(stream, body, reply, start)
        }
        Reply::Status(code) => (head(&format!("{code} Nope"), String::new(), 0), &body[..0]),
        Reply::ServeIgnoringRange => (head("200 OK", String::new(), body.len()), body),
        Reply::Serve | Reply::DropHalfway | Reply::DropBeforeBody => {
            let remaining = &body[start..];
            let head = if start == 0 {
                head("200 OK", String::new(), body.len())
            } else {
                let content_range = format!("Content-Range: bytes {start}-{}/{}\r\n", body.len() - 1, body.len());
                head("206 Partial Content", content_range, remaining.len())
            };
            let sent = match reply {
                Reply::DropHalfway => &remaining[..remaining.len() / 2],
                Reply::DropBeforeBody => &remaining[..0],
                _ => remaining,
            };
            (head, sent)
        }
    };
    stream.write_all(head.as_bytes())?;
    stream.write_all(sent)?;
    stream.flush()
    // Dropping the stream closes the connection, cutting short any announced body.
}

fn respond_hostile(mut stream: TcpStream, body: &[u8], reply: Reply, start: usize) -> std::io::Result<()> {
    let remaining = &body[start.min(body.len())..];
    let status = if start == 0 {
        "200 OK".to_string()
    } else {
        format!("206 Partial Content\r\nContent-Range: bytes {start}-{}/{}", body.len() - 1, body.len())
    };
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    match reply {
        Reply::StallHalfway => {
            write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", remaining.len())?;
            stream.write_all(&remaining[..remaining.len() / 2])?;
            stream.flush()?;
            std::thread::sleep(Duration::from_secs(30));
        }
        Reply::Drip => {
            write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", remaining.len())?;
            for byte in remaining {
                stream.write_all(&[*byte])?;
                stream.flush()?;
                std::thread::sleep(Duration::from_millis(50));
                if std::time::Instant::now() > give_up {
                    break;
                }
            }
        }
        Reply::Endless => {
            write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![0u8; 64 << 10];
            while std::time::Instant::now() < give_up {
                stream.write_all(&chunk)?;
            }
        }
        Reply::Html(with_type) => {
            let page = b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n";
            let content_type = if with_type { "Content-Type: text/html; charset=utf-8\r\n" } else { "" };
            write!(stream, "HTTP/1.1 200 OK\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n", page.len())?;
            stream.write_all(page)?;
        }
        Reply::RedirectWithDigest(correct) => {
            let digest = if correct { integrity::sha256_bytes(body) } else { integrity::sha256_bytes(b"other") };
            write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: ?resolved\r\nX-Linked-Etag: \"{digest}\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
        }
        _ => unreachable!("not a hostile reply"),
    }
    stream.flush()
}

fn options(cache: &Path) -> DownloadOptions {
    DownloadOptions { cache_dir: Some(cache.to_path_buf()), quiet: true, ..Default::default() }
}

/// Limits small enough that every fault below is detected within a few seconds.
fn fast_options(cache: &Path) -> DownloadOptions {
    let limits =
        DownloadLimits { min_bytes_per_sec: 20_000, rate_window: Duration::from_millis(500), max_bytes: 1 << 20 };
    DownloadOptions { limits, ..options(cache) }
}

/// The error of a fetch that must fail within `seconds`, one line naming the URL; nothing is left
/// under the final name.
fn failed_fetch(url: &str, opts: &DownloadOptions, seconds: u64) -> String {
    let started = std::time::Instant::now();
    let error = fetch(url, opts).expect_err("the fetch must fail");
    assert!(started.elapsed() < Duration::from_secs(seconds), "took {:?}: {error}", started.elapsed());
    let message = error.message().to_string();
    assert!(message.contains(url) && !message.contains('\n'), "{message}");
    assert!(!cached_path(url, opts).unwrap().exists(), "a broken download was stored: {message}");
    message
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return files };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn downloads_the_file_and_then_uses_the_cache() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/models/model.safetensors");

    let path = fetch(&url, &options(cache.path())).expect("download");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(path.file_name().unwrap(), "model.safetensors");
    assert!(path.starts_with(cache.path()));
    assert_eq!(path, cached_path(&url, &options(cache.path())).unwrap());
    let sidecar = integrity::digest_path(&path);
    let mut expected = vec![path.clone(), sidecar.clone()];
    expected.sort();
    let mut files = files_under(cache.path());
    files.sort();
    assert_eq!(files, expected, "no .part file is left behind, the digest is kept beside the file");
    assert!(std::fs::read_to_string(&sidecar).unwrap().starts_with(&integrity::sha256_bytes(&body)));

    let again = fetch(&url, &options(cache.path())).expect("cached");
    assert_eq!(again, path);
    assert_eq!(server.ranges().len(), 1, "the second fetch must not ask the server");

    // The cache is used offline too.
    let offline = DownloadOptions { offline: true, ..options(cache.path()) };
    assert_eq!(fetch(&url, &offline).unwrap(), path);
}

#[test]
fn resumes_within_one_fetch_after_a_dropped_connection() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::DropHalfway, Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();

    let path = fetch(&server.url("/a/model.safetensors"), &options(cache.path())).expect("resumed download");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let half = body.len() / 2;
    assert_eq!(server.ranges(), vec![None, Some(format!("bytes={half}-"))]);
}

#[test]
fn keeps_the_partial_file_and_resumes_on_the_next_fetch() {
    let body = fixture_bytes();
    let replies = vec![Reply::DropHalfway, Reply::DropBeforeBody, Reply::Serve];
    let server = TestServer::start(body.clone(), replies);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/b/model.safetensors");
    let half = body.len() / 2;

    let error = fetch(&url, &options(cache.path())).expect_err("the second attempt gets nowhere");
    assert!(error.message().contains(&url), "{error}");
    assert!(error.message().contains("run again to resume"), "{error}");
    let partial = files_under(cache.path());
    assert_eq!(partial.len(), 1);
    assert!(partial[0].to_string_lossy().ends_with("model.safetensors.part"));
    assert_eq!(std::fs::read(&partial[0]).unwrap(), body[..half]);

    let path = fetch(&url, &options(cache.path())).expect("resumed download");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let range = Some(format!("bytes={half}-"));
    assert_eq!(server.ranges(), vec![None, range.clone(), range]);
    let mut files = files_under(cache.path());
    files.sort();
    assert_eq!(files, vec![path.clone(), integrity::digest_path(&path)]);
}

#[test]
fn restarts_cleanly_when_the_server_ignores_range() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::DropHalfway, Reply::ServeIgnoringRange]);
    let cache = tempfile::tempdir().unwrap();

    let path = fetch(&server.url("/c/model.safetensors"), &options(cache.path())).expect("download");
    assert_eq!(std::fs::read(&path).unwrap(), body, "the partial bytes must not be kept twice");
    assert_eq!(server.ranges().len(), 2);
    assert!(server.ranges()[1].is_some());
}

#[test]
fn http_404_names_the_url_and_leaves_no_file() {
    let server = TestServer::start(fixture_bytes(), vec![Reply::Status(404)]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/missing/model.ckpt");

    let error = fetch(&url, &options(cache.path())).expect_err("404");
    assert!(error.message().contains(&url), "{error}");
    assert!(error.message().contains("404"), "{error}");
    assert!(!error.message().contains('\n'));
    assert!(files_under(cache.path()).is_empty(), "{:?}", files_under(cache.path()));
}

#[test]
fn offline_with_an_empty_cache_names_the_url_and_the_cache_path() {
    let server = TestServer::start(fixture_bytes(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/d/model.safetensors");
    let opts = DownloadOptions { offline: true, ..options(cache.path()) };

    let error = fetch(&url, &opts).expect_err("offline");
    let target = cached_path(&url, &opts).unwrap();
    assert!(error.message().contains(&url), "{error}");
    assert!(error.message().contains(&target.display().to_string()), "{error}");
    assert!(error.message().contains("--offline"), "{error}");
    assert!(server.ranges().is_empty(), "offline must not touch the network");
}

#[test]
fn a_closed_port_gives_a_clear_error() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // The listener is dropped: nothing listens on that port any more.
    let cache = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/model.safetensors");

    let started = std::time::Instant::now();
    let error = fetch(&url, &options(cache.path())).expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(15));
    let message = error.message();
    assert!(message.contains(&url) && message.contains("cannot connect"), "{message}");
    assert!(message.contains("put the file at"), "{message}");
    assert!(files_under(cache.path()).is_empty());
}

#[test]
fn same_file_name_at_two_urls_does_not_collide() {
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path());
    let a = cached_path("https://example.org/one/model.ckpt", &opts).unwrap();
    let b = cached_path("https://example.org/two/model.ckpt", &opts).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.file_name(), b.file_name());

    // The ensemble files share one folder and keep their names.
    let paths: Vec<PathBuf> =
        registry::HOEFLING_ENSEMBLE_URLS.iter().map(|url| cached_path(url, &opts).unwrap()).collect();
    assert!(paths.iter().all(|p| p.parent() == paths[0].parent()));
    assert_eq!(paths[2].file_name().unwrap(), "state_dict_00000.pth.tar");

    // A Hugging Face page URL and its file URL are the same download.
    let entry = registry::lookup("hoefling_2024_low_res").unwrap();
    assert_eq!(cached_path(entry.url, &opts).unwrap(), cached_path(&entry.download_url(), &opts).unwrap());
}

#[test]
fn registry_holds_openretinas_names_and_urls() {
    let base = "https://huggingface.co/datasets/open-retina/open-retina/tree/main/model_checkpoints";
    let expected = [
        ("hoefling_2024_low_res", "2026-03-09/hoefling_2024_cnn_low_res.ckpt"),
        ("hoefling_2024_high_res", "2026-03-09/hoefling_2024_cnn_high_res.ckpt"),
        ("karamanlis_2024_mouse", "2026-03-09/karamanlis_2024_mouse.ckpt"),
        ("karamanlis_2024_marmoset", "2026-03-09/karamanlis_2024_marmoset.ckpt"),
        ("maheswaranathan_2023", "2026-03-09/maheswaranathan_2023.ckpt"),
        ("sridhar_2025", "2026-03-09/sridhar_2025.ckpt"),
        ("goldin_2022_axolotl", "2026-03-09/goldin_2022_axolotl.ckpt"),
        ("goldin_2022_mouse", "2026-03-09/goldin_2022_mouse.ckpt"),
        ("hoefling_2024_base_low_res", "27-11-2025/hoefling_2024_base_low_res.ckpt"),
    ];
    assert_eq!(registry::PRETRAINED_MODELS.len(), expected.len());
    for (name, file) in expected {
        let entry = registry::lookup(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(entry.url, format!("{base}/{file}"));
        assert_eq!(entry.format, ModelFormat::LightningCheckpoint);
        assert_eq!(
            entry.download_url(),
            format!("https://huggingface.co/datasets/open-retina/open-retina/resolve/main/model_checkpoints/{file}")
        );
    }
    assert!(registry::lookup("hoefling_2024").is_none());

    let gin =
        "https://gin.g-node.org/eulerlab/rgc-natstim/raw/master/models/nonlinear/9d574ab9fcb85e8251639080c8d402b7";
    let mut expected_files = Vec::new();
    for id in ["00000", "01000", "02000", "03000", "04000"] {
        for (prefix, suffix) in [("config_", ".yaml"), ("data_info_", ".pkl"), ("state_dict_", ".pth.tar")] {
            expected_files.push(format!("{gin}/{prefix}{id}{suffix}"));
        }
    }
    assert_eq!(registry::HOEFLING_ENSEMBLE_URLS.to_vec(), expected_files);
    assert_eq!(registry::lookup("hoefling_2024_ensemble").unwrap().format, ModelFormat::NnfabrikEnsemble);

    let names = registry::known_names();
    assert_eq!(names[0], "demo");
    assert_eq!(names.len(), 11);
    assert!(registry::help_text().lines().count() == 11);
}

#[test]
fn resolve_model_handles_builtin_paths_and_unknown_names() {
    let cache = tempfile::tempdir().unwrap();
    let opts = DownloadOptions { offline: true, ..options(cache.path()) };

    assert_eq!(resolve_model("demo", &opts).unwrap(), ModelLocation::BuiltIn("demo"));
    assert_eq!(
        resolve_model(FIXTURE, &opts).unwrap(),
        ModelLocation::Local { path: PathBuf::from(FIXTURE), entry: None }
    );

    let missing = cache.path().join("nothing/here.ckpt");
    let error = resolve_model(missing.to_str().unwrap(), &opts).unwrap_err();
    assert!(error.message().contains("no such file"), "{error}");
    let error = resolve_model("model.ckpt", &opts).unwrap_err();
    assert!(error.message().contains("no such file"), "{error}");

    let error = resolve_model("hoefling_2025", &opts).unwrap_err();
    assert!(error.message().starts_with("unknown model name hoefling_2025; known names: demo, "), "{error}");
    assert!(error.message().contains("goldin_2022_mouse"), "{error}");

    // A registered name offline with an empty cache: the error names the URL to fetch and where to put it.
    let error = resolve_model("sridhar_2025", &opts).unwrap_err();
    assert!(
        error.message().contains("resolve/main/model_checkpoints/2026-03-09/sridhar_2025.ckpt")
            || error.message().contains("sridhar_2025.ckpt"),
        "{error}"
    );
    assert!(error.message().contains(&cache.path().display().to_string()), "{error}");

    let error = resolve_model("hoefling_2024_ensemble", &opts).unwrap_err();
    assert!(error.message().contains(registry::HOEFLING_ENSEMBLE.url), "{error}");
    assert!(error.message().contains(&cache.path().display().to_string()), "{error}");

    let error = resolve_model("ftp://example.org/model.ckpt", &opts).unwrap_err();
    assert!(error.message().contains("only http"), "{error}");
}

#[test]
fn resolve_model_downloads_urls() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    match resolve_model(&server.url("/e/model.safetensors"), &options(cache.path())).unwrap() {
        ModelLocation::Local { path, entry: None } => assert_eq!(std::fs::read(path).unwrap(), body),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn openretina_layout_is_recognised() {
    let dir = Path::new("/cache");
    assert_eq!(
        openretina_cache_path(registry::HOEFLING_ENSEMBLE_URLS[0], dir),
        Some(dir.join("9d574ab9fcb85e8251639080c8d402b7/config_00000.yaml"))
    );
    let entry = registry::lookup("goldin_2022_axolotl").unwrap();
    assert_eq!(
        openretina_cache_path(entry.url, dir),
        Some(dir.join("model_checkpoints/2026-03-09/goldin_2022_axolotl.ckpt"))
    );
    assert_eq!(openretina_cache_path("https://example.org/x.ckpt", dir), None);
}

#[test]
fn cache_dir_prefers_the_option_then_the_environment() {
    let explicit = DownloadOptions { cache_dir: Some(PathBuf::from("/tmp/x")), ..Default::default() };
    assert_eq!(cache_dir(&explicit).unwrap(), PathBuf::from("/tmp/x"));
    // The only test that touches the variable; the others pass cache_dir explicitly.
    std::env::set_var("OPENRETINA_CACHE_DIRECTORY", "/tmp/openretina-cache-test");
    assert_eq!(cache_dir(&DownloadOptions::default()).unwrap(), PathBuf::from("/tmp/openretina-cache-test"));
    std::env::remove_var("OPENRETINA_CACHE_DIRECTORY");
    assert!(cache_dir(&DownloadOptions::default()).unwrap().ends_with("retina"));
}

// ---------------------------------------------------------------------------------------------
// Broken and hostile servers: each fault is detected within seconds and nothing is cached.

#[test]
fn a_server_that_stalls_mid_body_is_cut_after_one_window() {
    let server = TestServer::start(fixture_bytes(), vec![Reply::StallHalfway]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/stall/model.safetensors");
    let message = failed_fetch(&url, &fast_options(cache.path()), 15);
    assert!(message.contains("no data for"), "{message}");
}

#[test]
fn a_server_that_drips_bytes_is_cut_for_being_too_slow() {
    let server = TestServer::start(fixture_bytes(), vec![Reply::Drip]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/drip/model.safetensors");
    let message = failed_fetch(&url, &fast_options(cache.path()), 15);
    assert!(message.contains("too slow"), "{message}");
}

#[test]
fn an_endless_body_stops_at_the_size_cap_and_is_deleted() {
    let server = TestServer::start(fixture_bytes(), vec![Reply::Endless]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/endless/model.safetensors");
    let message = failed_fetch(&url, &fast_options(cache.path()), 15);
    assert!(message.contains("more than any model (1048576 bytes)"), "{message}");
    assert!(files_under(cache.path()).is_empty(), "{:?}", files_under(cache.path()));
}

#[test]
fn an_announced_length_beyond_the_cap_is_refused_before_the_body() {
    let server = TestServer::start(fixture_bytes(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/big/model.safetensors");
    let mut opts = fast_options(cache.path());
    opts.limits.max_bytes = 1000;
    let message = failed_fetch(&url, &opts, 15);
    assert!(message.contains("announces"), "{message}");
    assert!(files_under(cache.path()).is_empty());
}

#[test]
fn a_short_body_is_never_stored_under_the_final_name() {
    let server = TestServer::start(fixture_bytes(), vec![Reply::DropHalfway]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/short/model.safetensors");
    let message = failed_fetch(&url, &fast_options(cache.path()), 15);
    assert!(message.contains("run again to resume"), "{message}");
}

#[test]
fn an_html_page_served_with_200_is_refused() {
    for with_type in [true, false] {
        let server = TestServer::start(fixture_bytes(), vec![Reply::Html(with_type)]);
        let cache = tempfile::tempdir().unwrap();
        let url = server.url("/login/model.ckpt");
        let message = failed_fetch(&url, &fast_options(cache.path()), 15);
        assert!(message.contains("web page (HTML)"), "{message}");
        assert!(files_under(cache.path()).is_empty(), "{:?}", files_under(cache.path()));
    }
}

#[test]
fn a_body_of_the_wrong_kind_is_refused() {
    let server = TestServer::start(b"just some bytes, not a zip archive".to_vec(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/wrong/model.ckpt");
    let message = failed_fetch(&url, &fast_options(cache.path()), 15);
    assert!(message.contains("not a zip archive"), "{message}");
    assert!(files_under(cache.path()).is_empty());
}

#[test]
fn the_digest_the_server_states_is_verified() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::RedirectWithDigest(true), Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let opts = fast_options(cache.path());
    let url = server.url("/hf/model.safetensors");
    let path = fetch(&url, &opts).expect("download with a stated digest");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let digest = integrity::sha256_bytes(&body);
    let line = digest_line(&url, &opts).unwrap().unwrap();
    assert_eq!(line, format!("sha256:         {digest} (matches the digest recorded at download)"));

    let server = TestServer::start(body, vec![Reply::RedirectWithDigest(false), Reply::Serve]);
    let url = server.url("/hf/model.safetensors");
    let message = failed_fetch(&url, &opts, 15);
    assert!(message.contains(&format!("has SHA-256 {digest}, the server states")), "{message}");
}

#[test]
fn a_damaged_cached_file_says_how_to_fix_it() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let opts = fast_options(cache.path());
    let url = server.url("/cached/model.safetensors");
    let path = fetch(&url, &opts).unwrap();
    let fix = format!("rm {}", path.display());

    // Cut short: the cheap check on every use notices.
    std::fs::write(&path, &body[..body.len() - 10]).unwrap();
    let message = fetch(&url, &opts).unwrap_err().message().to_string();
    assert!(message.contains("damaged") && message.contains(&fix), "{message}");

    // Same length, one byte of tensor data flipped: only the digest notices (`retina info`).
    let mut flipped = body.clone();
    *flipped.last_mut().unwrap() ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    assert_eq!(fetch(&url, &opts).unwrap(), path);
    let message = digest_line(&url, &opts).unwrap_err().message().to_string();
    assert!(message.contains("SHA-256") && message.contains(&fix), "{message}");
    assert_eq!(server.ranges().len(), 1, "a damaged cache is reported, not silently fetched again");
}

#[test]
fn refetch_downloads_a_damaged_cached_file_again() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let opts = fast_options(cache.path());
    let url = server.url("/refetch/model.safetensors");
    let path = fetch(&url, &opts).unwrap();
    std::fs::write(&path, &body[..body.len() - 10]).unwrap();
    // A partial download left beside it must not be resumed onto.
    std::fs::write(path.with_file_name("model.safetensors.part"), b"garbage").unwrap();
    let message = fetch(&url, &opts).unwrap_err().message().to_string();
    assert!(message.contains("--refetch") && message.contains("damaged"), "{message}");

    let refetch = DownloadOptions { refetch: true, ..opts.clone() };
    assert_eq!(fetch(&url, &refetch).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), body, "the cached copy is the server's file again");
    assert_eq!(server.ranges(), vec![None, None], "downloaded again from scratch, without a Range");
    // Once per process: a command resolving its model twice downloads it once; the cache is sound.
    fetch(&url, &refetch).unwrap();
    fetch(&url, &opts).unwrap();
    assert_eq!(server.ranges().len(), 2);
    assert!(!path.with_file_name("model.safetensors.part").exists());
}

#[test]
fn the_refetch_flag_through_the_command_line() {
    let body = fixture_bytes();
    let server = TestServer::start(body.clone(), vec![Reply::Serve]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/cli/model.safetensors");
    let retina = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_retina"))
            .args(["info", "--model-path", &url, "--cache-dir", cache.path().to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    assert_eq!(retina(&[]).0, Some(0));
    let path = cached_path(&url, &options(cache.path())).unwrap();
    std::fs::write(&path, &body[..100]).unwrap();
    let (code, stderr) = retina(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.lines().count() == 1 && stderr.contains("--refetch"), "{stderr}");
    let (code, stderr) = retina(&["--refetch"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(server.ranges().len(), 2, "info with --refetch downloads once");
    // Refused in one line: with --offline, and for a local file.
    let (code, stderr) = retina(&["--refetch", "--offline"]);
    assert!(code == Some(2) && stderr.lines().count() == 1 && stderr.contains("--offline"), "{stderr}");
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_retina"))
        .args(["info", "--model-path", FIXTURE, "--refetch"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(local.status.code() == Some(2) && stderr.trim().lines().count() == 1 && stderr.contains("local file"), "{stderr}");
}
