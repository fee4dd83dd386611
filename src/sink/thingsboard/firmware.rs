//! Firmware updates (OTA) of outpost's own device, by ThingsBoard's
//! firmware protocol (`../platforms.md` §1):
//!
//! 1. the `fw_title`, `fw_version`, `fw_checksum`, `fw_checksum_algorithm`
//!    and `fw_size` shared attributes name an image (they are also asked for
//!    on every connect, so one assigned while the uplink was down is found);
//! 2. outpost reports `fw_state` DOWNLOADING and asks for it chunk by chunk
//!    (`v2/fw/request/{id}/chunk/{n}`, the payload the chunk size), appending
//!    each answer (`v2/fw/response/{id}/chunk/{n}`) to a file in the state
//!    directory; a download cut by a reconnect or a restart resumes at the
//!    next chunk;
//! 3. DOWNLOADED, then the checksum, as ThingsBoard prints it (see
//!    `checksum`; an algorithm outpost cannot check fails before step 2):
//!    VERIFIED, or FAILED with `fw_error`;
//! 4. UPDATING: the verified image is announced on the local broker
//!    (`notice_topic`, retained), and the agent that installs it answers on
//!    `result_topic`: UPDATED (with `current_fw_title`/`current_fw_version`)
//!    or FAILED.
//!
//! The image is bounded (`max_size`) and must fit in the free space of
//! the state directory before the download starts.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::sink::FirmwareConfig;
use crate::sink::Publish;

/// What the shared attributes say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Offer {
    pub title: String,
    pub version: String,
    pub checksum: String,
    pub algorithm: String,
    pub size: u64,
}

impl Offer {
    /// The offer in `attrs`, if it names an image.
    fn of(attrs: &Map<String, Value>) -> Option<Offer> {
        let text = |k: &str| attrs.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Offer {
            title: text("fw_title")?,
            version: text("fw_version")?,
            checksum: text("fw_checksum").unwrap_or_default(),
            algorithm: text("fw_checksum_algorithm").unwrap_or_else(|| "SHA256".into()),
            size: attrs.get("fw_size").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    fn same(&self, title: &str, version: &str) -> bool {
        self.title == title && self.version == version
    }

    /// The image's file name: title and version, made safe for a path.
    fn file(&self, ext: &str) -> String {
        format!(
            "{}-{}.{ext}",
            safe_name(&self.title),
            safe_name(&self.version)
        )
    }
}

/// Where an update stands (kept in `firmware/state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum Stage {
    Downloading,
    Updating,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Kept {
    /// What the device runs: (title, version).
    current: Option<(String, String)>,
    /// The update under way.
    job: Option<(Offer, Stage)>,
    /// The last image that failed (title, version): not tried again when
    /// the connect-time request brings it back, only when ThingsBoard
    /// pushes an offer again (the operator assigned it again) or offers it
    /// with anything changed (a corrected checksum, say).
    failed: Option<(String, String)>,
    /// That offer whole.
    #[serde(default)]
    failed_offer: Option<Offer>,
}

pub(super) struct Firmware {
    cfg: FirmwareConfig,
    dir: Option<PathBuf>,
    kept: Kept,
    /// Bytes of the image received (the `.part` file's length).
    received: u64,
    /// This download's request id (new per session: answers of an older
    /// one are ignored).
    request: u64,
    /// The chunk asked for and not answered yet, and when.
    asked: Option<u64>,
    asked_at: Option<std::time::Instant>,
}

/// What the module wants done: publishes upstream, a notice locally.
#[derive(Debug, Default)]
pub(super) struct Steps {
    pub upstream: Vec<Publish>,
    /// (topic, values) to publish retained on the local broker.
    pub notice: Option<(String, Map<String, Value>)>,
}

/// The `fw_*` keys asked for on every connect.
pub(super) const KEYS: &str = "fw_title,fw_version,fw_checksum,fw_checksum_algorithm,fw_size";

impl Firmware {
    pub(super) fn new(cfg: &FirmwareConfig) -> Firmware {
        Firmware {
            cfg: cfg.clone(),
            dir: None,
            kept: Kept::default(),
            received: 0,
            request: 0,
            asked: None,
            asked_at: None,
        }
    }

    /// A chunk not answered within `chunk_timeout` is asked for again (the
    /// request or its answer was lost with a connection).
    pub(super) fn tick(&mut self, now: std::time::Instant) -> Vec<Publish> {
        let late = self
            .asked_at
            .is_some_and(|at| now.saturating_duration_since(at) >= self.cfg.chunk_timeout.0);
        if late && matches!(self.kept.job, Some((_, Stage::Downloading))) {
            tracing::debug!(chunk = ?self.asked, "firmware chunk not answered in time: asking again");
            vec![self.chunk_request()]
        } else {
            Vec::new()
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.cfg.enabled && self.dir.is_some()
    }

    /// Keeps its files in `dir` (and reads what an earlier run left there).
    pub(super) fn in_dir(mut self, dir: PathBuf) -> Firmware {
        self.kept = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some((offer, Stage::Downloading)) = &self.kept.job {
            self.received = std::fs::metadata(dir.join(offer.file("part")))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        self.dir = Some(dir);
        self
    }

    fn save(&self) {
        let Some(dir) = &self.dir else { return };
        let body = serde_json::to_vec_pretty(&self.kept).unwrap_or_default();
        if let Err(e) = crate::files::write_private(&dir.join("state.json"), &body) {
            tracing::warn!(error = %e, "cannot keep the firmware update's state");
        }
    }

    fn report(values: Value) -> Publish {
        Publish::control(
            "v1/devices/me/telemetry",
            &json!({"ts": crate::record::now_ms(), "values": values}),
        )
    }

    fn fail(&mut self, why: String) -> Steps {
        tracing::warn!(error = %why, "firmware update failed");
        if let Some((offer, _)) = self.kept.job.take() {
            self.kept.failed = Some((offer.title.clone(), offer.version.clone()));
            self.kept.failed_offer = Some(offer.clone());
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.join(offer.file("part")));
            }
        }
        self.asked = None;
        self.asked_at = None;
        self.received = 0;
        self.save();
        Steps {
            upstream: vec![Self::report(json!({"fw_state": "FAILED", "fw_error": why}))],
            notice: None,
        }
    }

    fn chunk_request(&mut self) -> Publish {
        let n = self
            .received
            .checked_div(self.cfg.chunk_size.0)
            .unwrap_or(0);
        self.asked = Some(n);
        self.asked_at = Some(std::time::Instant::now());
        Publish {
            topic: format!("v2/fw/request/{}/chunk/{n}", self.request),
            payload: self.cfg.chunk_size.0.to_string().into_bytes(),
            ids: Vec::new(),
        }
    }

    /// A new session: a download under way goes on where it stopped.
    pub(super) fn session_start(&mut self, request: u64) -> Vec<Publish> {
        self.request = request;
        self.asked = None;
        match &self.kept.job {
            Some((offer, Stage::Downloading)) if self.enabled() => {
                // Whole chunks only: a chunk cut by a crash is asked again.
                let chunk = self.cfg.chunk_size.0.max(1);
                let keep = self
                    .received
                    .checked_div(chunk)
                    .unwrap_or(0)
                    .saturating_mul(chunk);
                if keep != self.received {
                    if let Some(dir) = &self.dir {
                        if let Ok(f) = std::fs::OpenOptions::new()
                            .write(true)
                            .open(dir.join(offer.file("part")))
                        {
                            let _ = f.set_len(keep);
                        }
                    }
                    self.received = keep;
                }
                tracing::info!(title = %offer.title, version = %offer.version, received = self.received, size = offer.size, "resuming the firmware download");
                vec![self.chunk_request()]
            }
            _ => Vec::new(),
        }
    }

    /// Shared attributes of outpost's own device: `pushed` when ThingsBoard
    /// sent them of its own accord (an assignment), not as the answer to
    /// the request made at every connect.
    pub(super) fn offered(&mut self, attrs: &Map<String, Value>, pushed: bool) -> Steps {
        let Some(offer) = Offer::of(attrs) else {
            return Steps::default();
        };
        if !self.enabled() {
            return Steps::default();
        }
        let is = |x: &Option<(String, String)>| x.as_ref().is_some_and(|(t, v)| offer.same(t, v));
        if is(&self.kept.current) {
            return Steps::default();
        }
        // A version that failed: again only when offered anew.
        let same_failure = match &self.kept.failed_offer {
            Some(f) => *f == offer,
            None => is(&self.kept.failed),
        };
        if same_failure && !pushed {
            return Steps::default();
        }
        if self.kept.job.as_ref().is_some_and(|(o, _)| *o == offer) {
            return Steps::default(); // under way already
        }
        // A new image: whatever was under way is dropped.
        if let (Some(dir), Some((old, _))) = (&self.dir, &self.kept.job) {
            let _ = std::fs::remove_file(dir.join(old.file("part")));
        }
        self.kept.job = Some((offer.clone(), Stage::Downloading));
        self.received = 0;
        if offer.size == 0 || offer.size > self.cfg.max_size.0 {
            return self.fail(format!(
                "fw_size {} is not between 1 byte and firmware.max_size ({} bytes)",
                offer.size, self.cfg.max_size.0
            ));
        }
        if let Some(free) = self.dir.as_deref().and_then(free_bytes) {
            if free < offer.size.saturating_add(1 << 20) {
                return self.fail(format!(
                    "not enough space for the image: {} bytes free in the state directory, {} needed",
                    free, offer.size
                ));
            }
        }
        if !super::checksum::supported(&offer.algorithm) {
            return self.fail(format!(
                "checksum algorithm {} is not supported ({}); nothing was downloaded",
                offer.algorithm,
                super::checksum::SUPPORTED
            ));
        }
        if let Err(e) = self.part_file(&offer, true) {
            return self.fail(e);
        }
        self.save();
        tracing::info!(title = %offer.title, version = %offer.version, size = offer.size, "firmware update offered: downloading");
        Steps {
            upstream: vec![
                Self::report(json!({"fw_state": "DOWNLOADING"})),
                self.chunk_request(),
            ],
            notice: None,
        }
    }

    fn part_file(&self, offer: &Offer, truncate: bool) -> Result<std::fs::File, String> {
        let dir = self.dir.as_ref().ok_or("no state directory")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let path = dir.join(offer.file("part"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(!truncate)
            .write(true)
            .truncate(truncate)
            .open(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// ThingsBoard's `v2/fw/error` (`MqttTransportHandler.sendOtaPackageError`:
    /// the package is unknown or withdrawn, a chunk too large, ...). The
    /// server closes the session right after it, so the download is over:
    /// FAILED with the server's text, and no chunk is asked for again.
    pub(super) fn server_error(&mut self, text: &[u8]) -> Steps {
        if !matches!(self.kept.job, Some((_, Stage::Downloading))) {
            return Steps::default();
        }
        let text = String::from_utf8_lossy(text);
        self.fail(format!("ThingsBoard refused the download: {}", text.trim()))
    }

    /// An answer on `v2/fw/response/{id}/chunk/{n}`.
    pub(super) fn chunk(&mut self, request: &str, n: &str, data: &[u8]) -> Steps {
        let (Some((offer, Stage::Downloading)), Some(asked)) = (self.kept.job.clone(), self.asked)
        else {
            return Steps::default();
        };
        if request != self.request.to_string() || n != asked.to_string() {
            return Steps::default(); // an older session's, or a repeat
        }
        let written = self.part_file(&offer, false).and_then(|mut f| {
            f.write_all(data)
                .map_err(|e| format!("cannot write the image: {e}"))
        });
        if let Err(e) = written {
            return self.fail(e);
        }
        self.received = self.received.saturating_add(data.len() as u64);
        if self.received > offer.size {
            return self.fail(format!(
                "ThingsBoard sent {} bytes, more than fw_size {}",
                self.received, offer.size
            ));
        }
        if self.received < offer.size && !data.is_empty() {
            return Steps {
                upstream: vec![self.chunk_request()],
                notice: None,
            };
        }
        if self.received < offer.size {
            return self.fail(format!(
                "the download ended at {} of {} bytes",
                self.received, offer.size
            ));
        }
        self.verify(offer)
    }

    fn verify(&mut self, offer: Offer) -> Steps {
        self.asked = None;
        self.asked_at = None;
        let Some(dir) = self.dir.clone() else {
            return Steps::default();
        };
        let part = dir.join(offer.file("part"));
        let image = match std::fs::read(&part) {
            Ok(b) => b,
            Err(e) => return self.fail(format!("cannot read the image back: {e}")),
        };
        let mut up = vec![Self::report(json!({"fw_state": "DOWNLOADED"}))];
        let got = match super::checksum::digest(&offer.algorithm, &image) {
            Ok(d) => d,
            Err(e) => {
                let mut s = self.fail(e);
                up.append(&mut s.upstream);
                return Steps {
                    upstream: up,
                    notice: None,
                };
            }
        };
        if !got.eq_ignore_ascii_case(offer.checksum.trim()) {
            let mut s = self.fail(format!(
                "{} checksum mismatch: ThingsBoard says {}, the image has {got}",
                offer.algorithm, offer.checksum
            ));
            up.append(&mut s.upstream);
            return Steps {
                upstream: up,
                notice: None,
            };
        }
        let path = dir.join(offer.file("bin"));
        if let Err(e) = std::fs::rename(&part, &path) {
            let mut s = self.fail(format!("cannot keep the image: {e}"));
            up.append(&mut s.upstream);
            return Steps {
                upstream: up,
                notice: None,
            };
        }
        up.push(Self::report(json!({"fw_state": "VERIFIED"})));
        up.push(Self::report(json!({"fw_state": "UPDATING"})));
        self.kept.job = Some((offer.clone(), Stage::Updating));
        self.save();
        tracing::info!(title = %offer.title, version = %offer.version, path = %path.display(), "firmware image verified: handed to the local agent");
        let mut notice = Map::new();
        notice.insert("title".into(), json!(offer.title));
        notice.insert("version".into(), json!(offer.version));
        notice.insert("path".into(), json!(path.display().to_string()));
        notice.insert("size".into(), json!(offer.size));
        notice.insert("checksum".into(), json!(offer.checksum));
        notice.insert("checksum_algorithm".into(), json!(offer.algorithm));
        notice.insert("result_topic".into(), json!(self.cfg.result_topic));
        Steps {
            upstream: up,
            notice: Some((self.cfg.notice_topic.clone(), notice)),
        }
    }

    /// The local agent's answer on `result_topic`.
    pub(super) fn result(&mut self, topic: &str, payload: &[u8]) -> Steps {
        if topic != self.cfg.result_topic {
            return Steps::default();
        }
        let Some((offer, Stage::Updating)) = self.kept.job.clone() else {
            return Steps::default();
        };
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let state = v
            .get("state")
            .or_else(|| v.get("fw_state"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_uppercase();
        match state.as_str() {
            "UPDATED" => {
                self.kept.current = Some((offer.title.clone(), offer.version.clone()));
                self.kept.job = None;
                self.kept.failed = None;
                self.save();
                tracing::info!(title = %offer.title, version = %offer.version, "firmware updated");
                Steps {
                    upstream: vec![Self::report(json!({
                        "fw_state": "UPDATED",
                        "current_fw_title": offer.title,
                        "current_fw_version": offer.version,
                    }))],
                    notice: None,
                }
            }
            "FAILED" => {
                let why = v
                    .get("error")
                    .or_else(|| v.get("fw_error"))
                    .and_then(Value::as_str)
                    .unwrap_or("the local agent could not install it");
                let why: String = why.chars().take(512).collect();
                self.fail(why)
            }
            _ => {
                tracing::warn!(%topic, "firmware result without \"state\": \"UPDATED\" or \"FAILED\"; ignored");
                Steps::default()
            }
        }
    }
}

/// What the firmware module asks for, as a platform's actions.
pub(super) fn actions(steps: Steps) -> Vec<crate::sink::Action> {
    use crate::sink::{Action, Downlink};
    let mut out: Vec<Action> = steps.upstream.into_iter().map(Action::Upstream).collect();
    if let Some((topic, values)) = steps.notice {
        out.push(Action::Local(Downlink::Settings { topic, values }));
    }
    out
}

/// A name safe as one path component.
pub(super) fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let probe = if dir.exists() { dir } else { dir.parent()? };
    let v = nix::sys::statvfs::statvfs(probe).ok()?;
    (v.blocks_available() as u64).checked_mul(v.fragment_size() as u64)
}

#[cfg(test)]
mod bounds {
    use super::*;

    fn offer(size: u64) -> Map<String, Value> {
        let v = json!({"fw_title": "t", "fw_version": "1", "fw_checksum": "x", "fw_checksum_algorithm": "SHA256", "fw_size": size});
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_image_over_max_size_fails_before_any_download() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = FirmwareConfig {
            max_size: crate::units::ByteSize(1000),
            ..FirmwareConfig::default()
        };
        let mut fw = Firmware::new(&cfg).in_dir(dir.path().join("firmware"));
        let steps = fw.offered(&offer(1001), true);
        assert_eq!(steps.upstream.len(), 1, "FAILED only, no chunk asked");
        let v: Value = serde_json::from_slice(&steps.upstream[0].payload).expect("json");
        assert_eq!(v["values"]["fw_state"], "FAILED");
        assert!(v["values"]["fw_error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_size"));
        // The same image is not tried again when the connect-time request
        // brings it back; a smaller one is.
        assert!(fw.offered(&offer(1001), false).upstream.is_empty());
        let mut next = offer(500);
        next.insert("fw_version".into(), json!("2"));
        let steps = fw.offered(&next, false);
        assert!(steps
            .upstream
            .iter()
            .any(|p| p.topic.starts_with("v2/fw/request/")));
    }

    fn chunk_asked(steps: &Steps) -> bool {
        steps
            .upstream
            .iter()
            .any(|p| p.topic.starts_with("v2/fw/request/"))
    }

    fn state(steps: &Steps) -> Vec<String> {
        steps
            .upstream
            .iter()
            .filter_map(|p| serde_json::from_slice::<Value>(&p.payload).ok())
            .filter_map(|v| v["values"]["fw_state"].as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn an_algorithm_outpost_cannot_check_fails_before_any_chunk() {
        let dir = tempfile::tempdir().expect("dir");
        let mut fw = Firmware::new(&FirmwareConfig::default()).in_dir(dir.path().join("fw"));
        let mut o = offer(100);
        o.insert("fw_checksum_algorithm".into(), json!("SHA1"));
        let steps = fw.offered(&o, true);
        assert!(!chunk_asked(&steps));
        assert_eq!(state(&steps), ["FAILED"]);
    }

    #[test]
    fn a_failed_version_offered_again_is_tried_again() {
        let dir = tempfile::tempdir().expect("dir");
        let mut fw = Firmware::new(&FirmwareConfig::default()).in_dir(dir.path().join("fw"));
        let steps = fw.offered(&offer(100), true);
        assert!(chunk_asked(&steps));
        // The server withdraws it: FAILED with its text, nothing asked.
        let steps = fw.server_error(b"NOT_FOUND");
        assert_eq!(state(&steps), ["FAILED"]);
        assert!(!chunk_asked(&steps));
        // The connect-time request brings the same offer back: left alone.
        assert!(fw.offered(&offer(100), false).upstream.is_empty());
        // Corrected (another checksum), or assigned again: tried again.
        let mut fixed = offer(100);
        fixed.insert("fw_checksum".into(), json!("y"));
        assert!(chunk_asked(&fw.offered(&fixed, false)));
        fw.server_error(b"NOT_FOUND");
        assert!(chunk_asked(&fw.offered(&fixed, true)));
    }

    #[test]
    fn an_image_larger_than_the_free_space_fails() {
        let dir = tempfile::tempdir().expect("dir");
        let cfg = FirmwareConfig {
            max_size: crate::units::ByteSize(u64::MAX),
            ..FirmwareConfig::default()
        };
        let mut fw = Firmware::new(&cfg).in_dir(dir.path().join("firmware"));
        let steps = fw.offered(&offer(u64::MAX / 2), true);
        let v: Value = serde_json::from_slice(&steps.upstream[0].payload).expect("json");
        assert_eq!(v["values"]["fw_state"], "FAILED");
        assert!(
            v["values"]["fw_error"]
                .as_str()
                .unwrap_or_default()
                .contains("not enough space"),
            "{v}"
        );
    }
}
