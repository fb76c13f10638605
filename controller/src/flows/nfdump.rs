//! One `nfdump` run over one closed nfcapd file, its JSON records taken one
//! at a time as nfdump prints them: the caller decides after each record
//! whether to go on, and stops the process when it has enough, so nfdump's
//! output is never held whole, however large the file.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;

use super::FlowError;

/// The largest record accepted. nfdump prints a flow in about 500 bytes; an
/// object past this is not a record of nfdump's, and reading on would hold
/// whatever it is in memory.
pub(crate) const MAX_RECORD_BYTES: usize = 64 << 10;

/// What of nfdump's standard error is kept for an error message.
const STDERR_KEPT_BYTES: usize = 2048;

/// nfdump's way of saying "nothing", even in JSON mode.
const NOTHING_MATCHED: &str = "No matching flows";

/// A running `nfdump -r FILE`, read record by record. Dropping it kills the
/// process.
pub(crate) struct Records {
    child: Child,
    objects: JsonObjects<ChildStdout>,
    stderr: JoinHandle<String>,
    file: PathBuf,
}

impl Records {
    /// Start `program` (nfdump) over `file` with `filter`.
    pub fn start(program: &Path, file: &Path, filter: &str) -> Result<Records, FlowError> {
        let mut child = tokio::process::Command::new(program)
            .arg("-r")
            .arg(file)
            .args(["-q", "-N", "-6", "-o", "json"])
            .arg(filter)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| FlowError::Nfdump(format!("cannot run {}: {e}", program.display())))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(FlowError::Nfdump("nfdump started without its pipes".into()));
        };
        Ok(Records {
            child,
            objects: JsonObjects::new(stdout),
            stderr: tokio::spawn(kept_start(stderr)),
            file: file.to_path_buf(),
        })
    }

    /// The next record and the bytes nfdump printed for it; `None` once
    /// nfdump's output ended.
    pub async fn next(&mut self) -> Result<Option<(serde_json::Value, usize)>, FlowError> {
        self.objects.next().await.map_err(|e| match e {
            ReadError::Io(e) => FlowError::Nfdump(format!(
                "reading its output for {}: {e}",
                self.file.display()
            )),
            ReadError::Parse(what) => FlowError::Parse(format!("{}: {what}", self.file.display())),
        })
    }

    /// After the output ended: nfdump's exit. A file removed since it was
    /// listed (the retention prune took it) held nothing any more.
    pub async fn finish(mut self) -> Result<(), FlowError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| FlowError::Nfdump(format!("waiting for nfdump: {e}")))?;
        let said = self.stderr.await.unwrap_or_default();
        if status.success() || !self.file.exists() {
            return Ok(());
        }
        Err(FlowError::Nfdump(format!(
            "{} reading {}: {}",
            status,
            self.file.display(),
            said.trim()
        )))
    }

    /// Stop nfdump before its output ended, and reap it.
    pub async fn stop(mut self) {
        // An error here means it has exited already.
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.stderr.abort();
    }
}

/// The first [`STDERR_KEPT_BYTES`] of `stream`, read to its end so the
/// process never blocks on a full pipe.
async fn kept_start(stream: impl AsyncRead + Unpin) -> String {
    let mut reader = BufReader::new(stream);
    let mut kept = Vec::new();
    let _ = (&mut reader)
        .take(STDERR_KEPT_BYTES as u64)
        .read_to_end(&mut kept)
        .await;
    let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&kept).into_owned()
}

#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Parse(String),
}

/// The top-level JSON objects of a stream, one at a time. `nfdump -o json`
/// prints one array of objects, or with `-q` the bare objects one after the
/// other, comma-separated: between objects only brackets, commas and white
/// space are expected, or nfdump's line saying nothing matched.
struct JsonObjects<R> {
    reader: BufReader<R>,
    scan: Scanner,
}

/// Where [`JsonObjects`] is in the text.
#[derive(Default)]
struct Scanner {
    /// The object being read.
    object: Vec<u8>,
    /// Text between objects that is neither white space nor punctuation.
    stray: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl<R: AsyncRead + Unpin> JsonObjects<R> {
    fn new(reader: R) -> Self {
        JsonObjects {
            reader: BufReader::new(reader),
            scan: Scanner::default(),
        }
    }

    async fn next(&mut self) -> Result<Option<(serde_json::Value, usize)>, ReadError> {
        loop {
            let buffer = self.reader.fill_buf().await.map_err(ReadError::Io)?;
            if buffer.is_empty() {
                return self.scan.end().map(|()| None);
            }
            let mut used = 0;
            let mut done = None;
            for &byte in buffer {
                used += 1;
                if let Some(object) = self.scan.take(byte)? {
                    done = Some(object);
                    break;
                }
            }
            self.reader.consume(used);
            if let Some(object) = done {
                let size = object.len();
                let value = serde_json::from_slice(&object).map_err(|e| {
                    ReadError::Parse(format!("{e} in record {:?}", excerpt(&object)))
                })?;
                return Ok(Some((value, size)));
            }
        }
    }
}

impl Scanner {
    /// One byte; a whole object once its closing brace came.
    fn take(&mut self, byte: u8) -> Result<Option<Vec<u8>>, ReadError> {
        if self.depth == 0 {
            match byte {
                b'{' => {
                    self.end_stray()?;
                    self.depth = 1;
                    self.object.push(byte);
                }
                b'\n' => self.end_stray()?,
                b'[' | b']' | b',' | b' ' | b'\t' | b'\r' if self.stray.is_empty() => {}
                _ if self.stray.len() < NOTHING_MATCHED.len() + 16 => self.stray.push(byte),
                _ => return Err(self.stray_error()),
            }
            return Ok(None);
        }
        if self.object.len() >= MAX_RECORD_BYTES {
            return Err(ReadError::Parse(format!(
                "a record longer than {MAX_RECORD_BYTES} bytes, beginning {:?}",
                excerpt(&self.object)
            )));
        }
        self.object.push(byte);
        if self.in_string {
            match (self.escaped, byte) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return Ok(None);
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    return Ok(Some(std::mem::take(&mut self.object)));
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// The end of the text: not inside an object.
    fn end(&mut self) -> Result<(), ReadError> {
        if self.depth > 0 {
            return Err(ReadError::Parse(format!(
                "output ended inside a record: {:?}",
                excerpt(&self.object)
            )));
        }
        self.end_stray()
    }

    /// A line of text between objects: only nfdump's "nothing" is expected.
    fn end_stray(&mut self) -> Result<(), ReadError> {
        if self.stray.is_empty() {
            return Ok(());
        }
        if self.stray.trim_ascii() == NOTHING_MATCHED.as_bytes() {
            self.stray.clear();
            return Ok(());
        }
        Err(self.stray_error())
    }

    fn stray_error(&self) -> ReadError {
        ReadError::Parse(format!(
            "unexpected output between records: {:?}",
            excerpt(&self.stray)
        ))
    }
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(text: &str) -> Result<Vec<(serde_json::Value, usize)>, ReadError> {
        let mut objects = JsonObjects::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(object) = objects.next().await? {
            out.push(object);
        }
        Ok(out)
    }

    fn protocols(objects: &[(serde_json::Value, usize)]) -> Vec<u64> {
        objects
            .iter()
            .map(|(v, _)| v["proto"].as_u64().unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn the_array_and_the_quiet_form_give_the_same_records() {
        let records = r#"{ "proto" : 1, "label" : "a } \" { [" },
{ "proto" : 17, "nested" : { "x" : [1, {"y": 2}] } }"#;
        let quiet = all(&format!("{records}\n")).await.unwrap();
        let array = all(&format!("[\n{records}\n]\n")).await.unwrap();
        assert_eq!(protocols(&quiet), vec![1, 17]);
        assert_eq!(protocols(&array), vec![1, 17]);
        assert_eq!(quiet[0].0["label"], "a } \" { [");
        // The size is the record's own text, without separators.
        assert_eq!(quiet[0].1, records.find("},").unwrap() + 1);
    }

    #[tokio::test]
    async fn nothing_matched_is_no_records_and_other_text_an_error() {
        assert!(all("No matching flows\n").await.unwrap().is_empty());
        assert!(all("").await.unwrap().is_empty());
        assert!(matches!(
            all("{ \"proto\" : 1 }\nError: disk on fire\n").await,
            Err(ReadError::Parse(e)) if e.contains("disk on fire")
        ));
        assert!(matches!(
            all("{ \"proto\" : 1 ").await,
            Err(ReadError::Parse(e)) if e.contains("ended inside a record")
        ));
    }

    /// An endless object is refused at the record cap instead of being
    /// gathered into memory.
    #[tokio::test]
    async fn an_oversized_record_is_refused_at_the_cap() {
        let huge = format!("{{\"x\": \"{}\"}}", "a".repeat(MAX_RECORD_BYTES));
        assert!(matches!(
            all(&huge).await,
            Err(ReadError::Parse(e)) if e.contains("longer than")
        ));
    }
}
