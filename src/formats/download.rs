//! Turning a model spec (a path, a URL or a registered name) into a local file, downloading into a
//! cache when needed.
//!
//! Cache folder: `--cache-dir` if given, else `$OPENRETINA_CACHE_DIRECTORY` (the variable openretina
//! reads), else the platform cache folder + `retina` (e.g. `~/.cache/retina` on Linux).
//!
//! Cache layout: `<cache>/<host>/<hash>/<file name>`, where `<file name>` is the URL's last path
//! segment and `<hash>` is a 16-hex-digit FNV-1a hash of the rest of the URL (its folder and query).
//! Two URLs with the same file name therefore never collide, and files of the same remote folder
//! (the 15 ensemble files) end up side by side with their original names.
//!
//! A download is written to `<file name>.part` and renamed when complete, so a file with the final
//! name is always complete and is used without asking the network. After an interruption the `.part`
//! file is kept and the download continues from where it stopped with an HTTP Range request (within the
//! same run while each attempt gets further, and on the next run). Two processes downloading the
//! same file at the same time are not coordinated.
//!
//! Hostile or broken servers are bounded: a download slower than [`DownloadLimits::min_bytes_per_sec`]
//! over [`DownloadLimits::rate_window`] is cut, a whole fetch has a deadline that scales with the
//! announced size, no more than the announced length (or, without one, [`DownloadLimits::max_bytes`])
//! is accepted, and the body must be the kind of file its name says before it is moved into place;
//! see [`super::integrity`] for that check and for the SHA-256 kept beside each cached file.
//!
//! Files an openretina installation already downloaded (`$OPENRETINA_CACHE_DIRECTORY` or
//! `~/openretina_cache`, in openretina's own layout) are used as they are, read-only.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, ETAG, LOCATION, RANGE};
use reqwest::{StatusCode, Url};

use crate::error::{Error, Result};
use crate::formats::integrity::{self, RecordedDigest};
use crate::formats::registry::{self, ModelFormat, RegistryEntry};

/// The environment variable openretina reads for its cache folder.
pub const CACHE_ENV_VAR: &str = "OPENRETINA_CACHE_DIRECTORY";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Download attempts within one `fetch`; a new attempt is made only when the previous one got further.
const MAX_ATTEMPTS: usize = 5;
/// Redirects followed (Hugging Face sends one, to its file servers).
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct DownloadOptions {
    /// Overrides `$OPENRETINA_CACHE_DIRECTORY` and the platform cache folder.
    pub cache_dir: Option<PathBuf>,
    /// Never use the network: only files already in the cache.
    pub offline: bool,
    /// No progress bar and no "downloading" line.
    pub quiet: bool,
    /// Download again over the cached copy (once per process and file), e.g. when it is damaged.
    pub refetch: bool,
    pub limits: DownloadLimits,
}

/// Bounds on one download against a slow, stalled or endless server.
#[derive(Debug, Clone)]
pub struct DownloadLimits {
    /// Slowest transfer accepted, averaged over `rate_window`.
    pub min_bytes_per_sec: u64,
    /// Window of the rate check; also the longest wait for the response headers or any one read.
    pub rate_window: Duration,
    /// Largest file accepted (when the server announces a length, that length is the limit).
    pub max_bytes: u64,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            min_bytes_per_sec: 16 << 10,
            rate_window: Duration::from_secs(30),
            max_bytes: super::MAX_MODEL_BYTES,
        }
    }
}

impl DownloadLimits {
    /// How long a whole fetch (all its attempts) may take for a file of `bytes`: the time at the
    /// slowest accepted rate, plus one window.
    fn deadline_for(&self, bytes: u64) -> Duration {
        let seconds = bytes as f64 / self.min_bytes_per_sec.max(1) as f64;
        self.rate_window + CONNECT_TIMEOUT + Duration::from_secs_f64(seconds.min(1e9))
    }
}

/// Where a model spec points to. See [`resolve_model`].
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    /// A model retina builds itself (`demo`, see `registry::BUILT_IN_MODELS`): nothing to read.
    BuiltIn(&'static str),
    /// A file on disk, or for the ensemble a folder of files. `entry` is the registry entry when the
    /// spec was a registered name or URL, so the caller knows the format before opening the file.
    Local { path: PathBuf, entry: Option<&'static RegistryEntry> },
}

/// The cache folder (not created here): `opts.cache_dir`, else `$OPENRETINA_CACHE_DIRECTORY`, else
/// `<platform cache>/retina`.
pub fn cache_dir(opts: &DownloadOptions) -> Result<PathBuf> {
    if let Some(dir) = &opts.cache_dir {
        return Ok(dir.clone());
    }
    if let Some(dir) = std::env::var_os(CACHE_ENV_VAR).filter(|v| !v.is_empty()) {
        return Ok(expand_home(Path::new(&dir)));
    }
    match dirs::cache_dir() {
        Some(dir) => Ok(dir.join("retina")),
        None => Err(Error::new(format!(
            "cannot find a cache folder for downloads; set {CACHE_ENV_VAR} or pass --cache-dir"
        ))),
    }
}

/// Where [`fetch`] keeps the file downloaded from `url` (whether or not it is there yet).
pub fn cached_path(url: &str, opts: &DownloadOptions) -> Result<PathBuf> {
    let url = parse_download_url(url)?;
    Ok(cache_dir(opts)?.join(cache_relative_path(&url)))
}

/// The local copy of `url`: the cached file if complete, else downloaded into the cache.
/// Hugging Face page URLs (`/tree/main/...`) are downloaded from their file URL (`/resolve/main/...`).
/// A cached file is checked cheaply on every use (length and kind, see `integrity::check_cached`).
pub fn fetch(url: &str, opts: &DownloadOptions) -> Result<PathBuf> {
    let target = cached_path(url, opts)?;
    if opts.refetch && first_refetch(&target) {
        refetch(url, &target, opts)?;
        return Ok(target);
    }
    if target.exists() {
        integrity::check_cached(&target)?;
        return Ok(target);
    }
    if let Some(existing) = openretina_cache_dir().and_then(|dir| openretina_cache_path(url, &dir)) {
        if existing.is_file() {
            integrity::check_cached(&existing)?;
            return Ok(existing);
        }
    }
    download(url, &target, opts)?;
    Ok(target)
}

/// Whether `target` is asked for the first time in this process with `--refetch`: a command that
/// resolves its model more than once downloads it once.
fn first_refetch(target: &Path) -> bool {
    static REFETCHED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut done = REFETCHED.lock().unwrap_or_else(|e| e.into_inner());
    if done.iter().any(|p| p == target) {
        return false;
    }
    done.push(target.to_path_buf());
    true
}

/// `--refetch`: download `url` again from scratch (a leftover partial download may be what is
/// broken); the cached copy is replaced only once the new one has passed every check.
fn refetch(url: &str, target: &Path, opts: &DownloadOptions) -> Result<()> {
    remove_part(&part_path(target))?;
    download(url, target, opts)
}

/// `sha256:` line for `retina info`: the SHA-256 of the model file a spec names, compared with the
/// digest recorded when it was downloaded (a mismatch is an error saying which file to delete).
/// `None` for folders.
pub fn digest_line(spec: &str, opts: &DownloadOptions) -> Result<Option<String>> {
    // The model was resolved (and refetched, if asked) before; here only the cache is read.
    let offline = DownloadOptions { offline: true, quiet: true, refetch: false, ..opts.clone() };
    match resolve_model(spec, &offline)? {
        ModelLocation::BuiltIn(_) => {
            Ok(Some(format!("sha256:         {} (built in)", integrity::sha256_bytes(super::DEMO_MODEL))))
        }
        ModelLocation::Local { path, .. } if path.is_file() => {
            let (digest, compared) = integrity::verify_cached(&path)?;
            let note = if compared { " (matches the digest recorded at download)" } else { "" };
            Ok(Some(format!("sha256:         {digest}{note}")))
        }
        ModelLocation::Local { .. } => Ok(None),
    }
}

/// The folder holding the 15 Hoefling et al. 2024 ensemble files with their original names
/// (`config_00000.yaml`, `data_info_00000.pkl`, `state_dict_00000.pth.tar`, ...), downloaded if needed.
pub fn fetch_hoefling_ensemble(opts: &DownloadOptions) -> Result<PathBuf> {
    let refetching = opts.refetch && first_refetch(Path::new(registry::HOEFLING_ENSEMBLE.url));
    // An openretina installation keeps the whole ensemble in one folder: use it if it is complete
    // (with --refetch, the files are downloaded again into retina's cache instead).
    if let Some(dir) = openretina_cache_dir().filter(|_| !refetching) {
        let folders: Vec<Option<PathBuf>> = registry::HOEFLING_ENSEMBLE_URLS
            .iter()
            .map(|url| openretina_cache_path(url, &dir).filter(|path| path.is_file()))
            .map(|path| path.and_then(|p| p.parent().map(Path::to_path_buf)))
            .collect();
        if let Some(Some(first)) = folders.first() {
            if folders.iter().all(|folder| folder.as_ref() == Some(first)) {
                return Ok(first.clone());
            }
        }
    }
    let targets = registry::HOEFLING_ENSEMBLE_URLS
        .iter()
        .map(|url| Ok((*url, cached_path(url, opts)?)))
        .collect::<Result<Vec<_>>>()?;
    let folder = match targets.first().and_then(|(_, target)| target.parent()) {
        Some(folder) => folder.to_path_buf(),
        None => return Err(Error::new("the ensemble has no files")),
    };
    if refetching {
        for (url, target) in &targets {
            refetch(url, target, opts)?;
        }
        return Ok(folder);
    }
    for (_, target) in &targets {
        if target.exists() {
            integrity::check_cached(target)?;
        }
    }
    let missing = targets.iter().filter(|(_, target)| !target.is_file()).count();
    if opts.offline && missing > 0 {
        // One message for the whole folder rather than for its first missing file.
        return Err(Error::new(format!(
            "cannot download the Hoefling ensemble from {} (offline mode, {missing} of 15 files missing); put \
             config_/data_info_/state_dict_ files for 00000 … 04000 into {} or run without --offline",
            registry::HOEFLING_ENSEMBLE.url,
            folder.display()
        )));
    }
    for (url, target) in &targets {
        if !target.is_file() {
            download(url, target, opts)?;
        }
    }
    Ok(folder)
}

/// Resolve a model spec, in this order:
/// 1. a built-in name (`demo`) -> [`ModelLocation::BuiltIn`]; nothing is read. A file called `demo`
///    can still be given as `./demo`;
/// 2. an `http://` or `https://` URL -> downloaded with [`fetch`];
/// 3. a registered name (`registry::lookup`) -> downloaded (the ensemble as a folder);
/// 4. an existing file or folder -> returned as is (`~/` is expanded);
/// 5. otherwise an error: "no such file" when the spec looks like a path (has a `/`, `\` or a file
///    extension), else "unknown model name" listing the known names.
pub fn resolve_model(spec: &str, opts: &DownloadOptions) -> Result<ModelLocation> {
    if let Some(name) = registry::BUILT_IN_MODELS.iter().find(|name| **name == spec) {
        if opts.refetch {
            bail!("{spec} is built in, not a download: --refetch re-downloads models given by URL or pretrained name; drop it");
        }
        return Ok(ModelLocation::BuiltIn(name));
    }
    if spec.contains("://") {
        let entry = registry::all_entries().find(|entry| entry.url == spec || entry.download_url() == spec);
        let path = match entry {
            Some(entry) if entry.format == ModelFormat::NnfabrikEnsemble => fetch_hoefling_ensemble(opts)?,
            _ => fetch(spec, opts)?,
        };
        return Ok(ModelLocation::Local { path, entry });
    }
    if let Some(entry) = registry::lookup(spec) {
        let path = match entry.format {
            ModelFormat::NnfabrikEnsemble => fetch_hoefling_ensemble(opts)?,
            _ => fetch(entry.url, opts)?,
        };
        return Ok(ModelLocation::Local { path, entry: Some(entry) });
    }
    let path = expand_home(Path::new(spec));
    if path.exists() {
        if opts.refetch {
            return Err(Error::file(&path, "is a local file, not a download: --refetch re-downloads models given by URL or pretrained name; drop it"));
        }
        return Ok(ModelLocation::Local { path, entry: None });
    }
    let looks_like_path = spec.contains('/') || spec.contains('\\') || path.extension().is_some();
    if looks_like_path {
        Err(Error::file(&path, "no such file"))
    } else {
        Err(Error::new(registry::unknown_name_message(spec)))
    }
}

/// Where openretina itself would have stored `url` inside its cache folder `dir`, for the two hosts it
/// downloads from: GIN files as `<dir>/<parent folder>/<file>`, Hugging Face files as
/// `<dir>/<path after "main/">`. `None` for other URLs.
pub fn openretina_cache_path(url: &str, dir: &Path) -> Option<PathBuf> {
    let relative = if let Some(path) = url.strip_prefix("https://gin.g-node.org/") {
        let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
        parts[parts.len().saturating_sub(2)..].join("/")
    } else if url.starts_with("https://huggingface.co/") {
        url.rsplit("main/").next()?.to_string()
    } else {
        return None;
    };
    // Never step outside the cache folder.
    if relative.is_empty() || relative.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return None;
    }
    Some(dir.join(relative))
}

/// openretina's cache folder: `$OPENRETINA_CACHE_DIRECTORY`, else `~/openretina_cache`.
fn openretina_cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV_VAR).filter(|v| !v.is_empty()) {
        Some(dir) => Some(expand_home(Path::new(&dir))),
        None => dirs::home_dir().map(|home| home.join("openretina_cache")),
    }
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), dirs::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// The URL to download from, checked to be http(s).
fn parse_download_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(&registry::huggingface_file_url(url))
        .map_err(|e| Error::new(format!("{url} is not a valid URL ({e})")))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host_str().is_some() => Ok(parsed),
        _ => Err(Error::new(format!("cannot download {url}: only http:// and https:// URLs are supported"))),
    }
}

/// `<host>/<hash of the URL without its file name>/<file name>` (see the module comment).
fn cache_relative_path(url: &Url) -> PathBuf {
    let file_name = url.path_segments().and_then(|mut segments| segments.next_back()).unwrap_or("");
    let mut folder_url = url.clone();
    folder_url.set_fragment(None);
    if let Ok(mut segments) = folder_url.path_segments_mut() {
        segments.pop();
    }
    let host = match url.port() {
        Some(port) => format!("{}_{port}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_string(),
    };
    PathBuf::from(safe_file_name(&host))
        .join(format!("{:016x}", fnv1a_64(folder_url.as_str().as_bytes())))
        .join(safe_file_name(file_name))
}

/// A name that is safe as one path component on every platform; never empty, never hidden.
fn safe_file_name(name: &str) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-+".contains(c) { c } else { '_' }).collect();
    match safe.trim_start_matches('.') {
        "" => "download".to_string(),
        rest if rest.len() != safe.len() => format!("_{rest}"),
        _ => safe,
    }
}

/// FNV-1a: a tiny hash that, unlike `DefaultHasher`, stays the same across Rust versions, so cache
/// paths stay valid.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3))
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

/// How one download attempt ended when it did not fail for good.
enum Attempt {
    Complete,
    /// Network trouble; `progressed` says whether this attempt got further than the previous one.
    Interrupted {
        reason: String,
        progressed: bool,
    },
}

/// Download `url` to `target` via `target.part`, retrying while each attempt gets further.
fn download(url: &str, target: &Path, opts: &DownloadOptions) -> Result<()> {
    if opts.offline {
        return Err(Error::new(format!(
            "cannot download {url} (offline mode); put the file at {} or run without --offline",
            target.display()
        )));
    }
    let download_url = parse_download_url(url)?;
    let limits = &opts.limits;
    // Redirects are followed by hand: Hugging Face states a file's SHA-256 on the redirect only.
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(limits.rate_window)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("retina/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::new(format!("cannot start an HTTP client ({})", innermost_cause(&e))))?;
    if !opts.quiet {
        eprintln!("downloading {url}\n  to {}", target.display());
    }
    let part = part_path(target);
    let mut transfer = Transfer { started: Instant::now(), deadline: limits.deadline_for(limits.max_bytes), sha256: None };
    let mut last_reason = String::new();
    for _ in 0..MAX_ATTEMPTS {
        match download_once(&client, &download_url, url, &part, opts, &mut transfer)? {
            Attempt::Complete => return finish(url, &part, target, transfer.sha256.as_deref()),
            Attempt::Interrupted { reason, progressed } => {
                last_reason = reason;
                if !progressed || transfer.started.elapsed() > transfer.deadline {
                    break;
                }
            }
        }
    }
    let resume_hint = if part.is_file() { "; run again to resume" } else { "" };
    Err(Error::new(format!(
        "cannot download {url} ({last_reason}){resume_hint}; check the network connection, or put the file at {}",
        target.display()
    )))
}

/// What one fetch learns across its attempts.
struct Transfer {
    started: Instant,
    /// For the whole fetch; shortened once the server announces the file's length.
    deadline: Duration,
    /// The SHA-256 the server states for the file, if it does.
    sha256: Option<String>,
}

/// A complete `part`: check its kind and digest, record the digest, move it into place. A body
/// that fails a check is deleted (it would otherwise poison the cache).
fn finish(url: &str, part: &Path, target: &Path, stated_sha256: Option<&str>) -> Result<()> {
    let refuse = |problem: String| -> Result<()> {
        remove_part(part)?;
        Err(Error::new(format!("cannot download {url}: {problem}; nothing was saved")))
    };
    let mut file = File::open(part).map_err(|e| Error::file(part, format!("cannot read the download ({e})")))?;
    let len = file.metadata().map_err(|e| Error::file(part, format!("cannot read the download ({e})")))?.len();
    let name = target.file_name().unwrap_or_default().to_string_lossy().into_owned();
    if let Err(problem) = integrity::check_body(&name, &mut file, len) {
        return refuse(problem);
    }
    drop(file);
    let sha256 = integrity::sha256_file(part)?;
    if let Some(stated) = stated_sha256 {
        if stated != sha256 {
            return refuse(format!("the file received has SHA-256 {sha256}, the server states {stated}"));
        }
    }
    integrity::record_digest(target, &RecordedDigest { sha256, len })?;
    std::fs::rename(part, target)
        .map_err(|e| Error::file(target, format!("cannot move the finished download into place ({e})")))
}

/// Send a GET (with `Range` when resuming), following redirects by hand and noting any SHA-256 the
/// server states on the way (`X-Linked-Etag`, or a digest-shaped `ETag` from Hugging Face).
fn send_following_redirects(
    client: &reqwest::blocking::Client,
    download_url: &Url,
    range: Option<String>,
    transfer: &mut Transfer,
) -> std::result::Result<reqwest::blocking::Response, String> {
    let mut current = download_url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = client.get(current.clone());
        if let Some(range) = &range {
            request = request.header(RANGE, range);
        }
        let response = request.send().map_err(|e| describe_request_error(&e))?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(sha) = header("x-linked-etag").as_deref().and_then(integrity::sha256_from_etag) {
            transfer.sha256 = Some(sha);
        }
        let from_huggingface =
            current.host_str().is_some_and(|h| h == "huggingface.co" || h.ends_with(".huggingface.co") || h == "hf.co");
        if from_huggingface && transfer.sha256.is_none() {
            transfer.sha256 = header(ETAG.as_str()).as_deref().and_then(integrity::sha256_from_etag);
        }
        if !response.status().is_redirection() {
            return Ok(response);
        }
        let location = header(LOCATION.as_str()).ok_or("a redirect without a Location")?;
        current = current.join(&location).map_err(|_| format!("a redirect to an invalid address {location:?}"))?;
        if !matches!(current.scheme(), "http" | "https") {
            return Err(format!("a redirect to a non-http address {current}"));
        }
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// One HTTP request: continues `part` with a Range request when it already holds bytes.
fn download_once(
    client: &reqwest::blocking::Client,
    download_url: &Url,
    url: &str,
    part: &Path,
    opts: &DownloadOptions,
    transfer: &mut Transfer,
) -> Result<Attempt> {
    let limits = &opts.limits;
    let offset = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let range = (offset > 0).then(|| format!("bytes={offset}-"));
    let mut response = match send_following_redirects(client, download_url, range, transfer) {
        Ok(response) => response,
        Err(reason) => return Ok(Attempt::Interrupted { reason, progressed: false }),
    };
    let status = response.status();
    let content_length = response.content_length();
    let (start, expected_total) = match status {
        StatusCode::OK => (0, content_length),
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let range =
                response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(parse_content_range);
            match range {
                Some((range_start, total)) if range_start == offset => {
                    (offset, total.or(content_length.map(|length| offset + length)))
                }
                // A range we did not ask for: start again from the beginning.
                _ => {
                    remove_part(part)?;
                    let reason = "the server sent an unexpected byte range".to_string();
                    return Ok(Attempt::Interrupted { reason, progressed: true });
                }
            }
        }
        // The partial file is longer than the remote file (it changed): start again.
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            remove_part(part)?;
            let reason = "the partial download does not match the remote file".to_string();
            return Ok(Attempt::Interrupted { reason, progressed: true });
        }
        _ => {
            // The file is gone or forbidden: a partial copy of it is of no use.
            if status.is_client_error() {
                remove_part(part)?;
            }
            return Err(Error::new(format!("cannot download {url}: the server answered HTTP {status}")));
        }
    };

    if let Some(total) = expected_total {
        if total > limits.max_bytes {
            remove_part(part)?;
            return Err(Error::new(format!(
                "cannot download {url}: the server announces {total} bytes, more than any model ({} bytes)",
                limits.max_bytes
            )));
        }
        transfer.deadline = transfer.deadline.min(limits.deadline_for(total));
    }
    let is_html = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
    if is_html {
        remove_part(part)?;
        return Err(Error::new(format!(
            "cannot download {url}: the server sent a web page (HTML) instead of the file; check the address"
        )));
    }
    let size_limit = expected_total.unwrap_or(limits.max_bytes);

    let folder = part.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(|e| {
        Error::file(folder, format!("cannot create the cache folder ({e}); pass --cache-dir or set {CACHE_ENV_VAR}"))
    })?;
    // A 200 answer (also to a Range request the server ignored) holds the whole file: start afresh.
    let opened = if start == 0 { File::create(part) } else { OpenOptions::new().append(true).open(part) };
    let mut file = opened.map_err(|e| Error::file(part, format!("cannot write the download ({e})")))?;

    let progress = progress_bar(opts, expected_total, start, url);
    let mut written: u64 = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut window = (Instant::now(), 0u64);
    let read_error = loop {
        let count = match response.read(&mut buffer) {
            Ok(0) => break None,
            Ok(count) => count,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || is_timeout(&e) => {
                break Some(format!("no data for {:?}", limits.rate_window))
            }
            Err(e) => break Some(innermost_cause(&e)),
        };
        if start + written + count as u64 > size_limit {
            drop(file);
            remove_part(part)?;
            let what = if expected_total.is_some() { "the length it announced" } else { "any model" };
            return Err(Error::new(format!(
                "cannot download {url}: the server sends more than {what} ({size_limit} bytes); nothing was saved"
            )));
        }
        file.write_all(&buffer[..count]).map_err(|e| Error::file(part, format!("cannot write the download ({e})")))?;
        written += count as u64;
        progress.inc(count as u64);
        window.1 += count as u64;
        let elapsed = window.0.elapsed();
        if elapsed >= limits.rate_window {
            let needed = (limits.min_bytes_per_sec as f64 * elapsed.as_secs_f64()) as u64;
            if window.1 < needed {
                break Some(format!(
                    "too slow: {} bytes in {:.1} s, at least {} bytes/s needed",
                    window.1,
                    elapsed.as_secs_f64(),
                    limits.min_bytes_per_sec
                ));
            }
            window = (Instant::now(), 0);
        }
        if transfer.started.elapsed() > transfer.deadline {
            break Some(format!("not finished within {:.0} s", transfer.deadline.as_secs_f64()));
        }
    };
    progress.finish_and_clear();
    file.sync_all().map_err(|e| Error::file(part, format!("cannot write the download ({e})")))?;
    drop(file);

    let received = start + written;
    if let Some(reason) = read_error {
        let reason = format!("connection lost after {received} bytes: {reason}");
        return Ok(Attempt::Interrupted { reason, progressed: written > 0 });
    }
    match expected_total {
        Some(total) if received < total => Ok(Attempt::Interrupted {
            reason: format!("connection closed after {received} of {total} bytes"),
            progressed: written > 0,
        }),
        Some(total) if received > total => {
            remove_part(part)?;
            Err(Error::new(format!(
                "cannot download {url}: received {received} bytes but the server announced {total}"
            )))
        }
        _ => Ok(Attempt::Complete),
    }
}

/// `Content-Range: bytes <start>-<end>/<total or *>` -> (start, total).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

fn remove_part(part: &Path) -> Result<()> {
    match std::fs::remove_file(part) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::file(part, format!("cannot remove the partial download ({e})")))
        }
        _ => Ok(()),
    }
}

fn progress_bar(opts: &DownloadOptions, total: Option<u64>, start: u64, url: &str) -> ProgressBar {
    if opts.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(name);
    bar.set_position(start);
    bar
}

/// Whether an I/O error from the response body is reqwest's read timeout.
fn is_timeout(error: &std::io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if e.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_timeout) {
            return true;
        }
        source = e.source();
    }
    false
}

/// A short reason for a failed request: "timed out", "cannot connect: Connection refused ...".
fn describe_request_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let cause = innermost_cause(error);
    if error.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        cause
    }
}

/// The deepest error in a chain says what actually happened ("Connection refused (os error 111)");
/// the outer ones only repeat the context.
fn innermost_cause(error: &dyn std::error::Error) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}
