//! JSON lines with a length bound: the framing of the guest channel and of
//! exec sessions on every hop.

use serde::Serialize;

/// Why a line was not handed out by [`LineFramer`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The line exceeded the bound; its bytes were discarded up to the next `\n`.
    #[error("line longer than {max_bytes} bytes discarded")]
    TooLong {
        /// The bound.
        max_bytes: usize,
    },
}

/// Splits a byte stream into `\n`-terminated lines with a length bound.
/// I/O-free: feed it whatever a read returned.
#[derive(Debug)]
pub struct LineFramer {
    buffer: Vec<u8>,
    max_bytes: usize,
    /// Inside an oversized line: drop bytes until the next newline.
    discarding: bool,
}

impl LineFramer {
    /// A framer that rejects lines longer than `max_bytes` (without the `\n`).
    pub fn new(max_bytes: usize) -> Self {
        LineFramer {
            buffer: Vec::new(),
            max_bytes,
            discarding: false,
        }
    }

    /// Appends `bytes` and returns every line completed by them, without the
    /// trailing `\n` (and `\r`, which a serial line may add). Empty lines are
    /// skipped.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Result<Vec<u8>, FramingError>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    let (head, rest) = (&bytes[..pos], &bytes[pos + 1..]);
                    bytes = rest;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if self.buffer.len() + head.len() > self.max_bytes {
                        self.buffer.clear();
                        out.push(Err(FramingError::TooLong {
                            max_bytes: self.max_bytes,
                        }));
                        continue;
                    }
                    self.buffer.extend_from_slice(head);
                    let mut line = std::mem::take(&mut self.buffer);
                    while line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if !line.is_empty() {
                        out.push(Ok(line));
                    }
                }
                None => {
                    if !self.discarding {
                        if self.buffer.len() + bytes.len() > self.max_bytes {
                            self.buffer.clear();
                            self.discarding = true;
                            out.push(Err(FramingError::TooLong {
                                max_bytes: self.max_bytes,
                            }));
                        } else {
                            self.buffer.extend_from_slice(bytes);
                        }
                    }
                    bytes = &[];
                }
            }
        }
        out
    }
}

/// One message as a channel line (JSON + `\n`).
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}
