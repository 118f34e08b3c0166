//! Codec and framing tests, including a deterministic fuzz loop.

use super::codec::{decode_frame, encode_frame};
use super::*;
use crate::Error;

fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out).expect("encodable");
    out
}

fn reason(err: Error) -> ProtocolErrorKind {
    match err {
        Error::AgentProtocol { reason } => reason,
        e => panic!("expected a protocol error, got {e:?}"),
    }
}

fn meta(file_type: FileType) -> Metadata {
    Metadata {
        file_type,
        size: 4096,
        mode: 0o755,
        uid: 1000,
        gid: 100,
        mtime_secs: -5,
        mtime_nanos: 999_999_999,
    }
}

/// At least one frame of every kind, every enum variant and both option arms.
fn samples() -> Vec<Frame> {
    let mut m = vec![
        Frame::new(
            0,
            Message::Hello(Hello {
                versions: VersionRange { min: 1, max: 7 },
                software: "microsandbox 0.1.0 ✓".into(),
            }),
        ),
        Frame::new(
            0,
            Message::Ready(Ready {
                version: 1,
                agent_version: "msb-agent 0.1.0".into(),
                timings: vec![
                    BootTiming {
                        phase: "mounts".into(),
                        micros: 1500,
                    },
                    BootTiming {
                        phase: "ready".into(),
                        micros: u64::MAX,
                    },
                ],
            }),
        ),
        Frame::new(
            0,
            Message::Ready(Ready {
                version: 2,
                agent_version: String::new(),
                timings: vec![],
            }),
        ),
        Frame::new(0, Message::Shutdown { grace_ms: 10_000 }),
        Frame::new(0, Message::Ping { nonce: 42 }),
        Frame::new(0, Message::Pong { nonce: u64::MAX }),
        Frame::new(7, Message::WindowUpdate { increment: 1 }),
        Frame::new(
            7,
            Message::WindowUpdate {
                increment: MAX_WINDOW,
            },
        ),
        Frame::new(5, Message::Reset),
        Frame::new(
            1,
            Message::ExecStart(ExecStart {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hi; exit 3".into()],
                env: vec![
                    ("PATH".into(), "/bin".into()),
                    ("EMPTY".into(), String::new()),
                ],
                cwd: Some("/tmp".into()),
                user: Some("1000:1000".into()),
                tty: Some(TtySize { rows: 24, cols: 80 }),
                stdin: StdinMode::Pipe,
            }),
        ),
        Frame::new(
            u32::MAX,
            Message::ExecStart(ExecStart {
                argv: vec!["true".into()],
                env: vec![],
                cwd: None,
                user: None,
                tty: None,
                stdin: StdinMode::Null,
            }),
        ),
        Frame::new(1, Message::ExecStarted { pid: 17 }),
        Frame::new(1, Message::Stdin(b"input\n".to_vec())),
        Frame::new(1, Message::Stdin(Vec::new())),
        Frame::new(1, Message::StdinClose),
        Frame::new(1, Message::Stdout(vec![0, 255, 10, 13])),
        Frame::new(1, Message::Stderr(b"oops".to_vec())),
        Frame::new(1, Message::Exited(ExitStatus::Code(-1))),
        Frame::new(
            1,
            Message::Exited(ExitStatus::Signal {
                signal: 9,
                core_dumped: true,
            }),
        ),
        Frame::new(1, Message::Signal { signal: 15 }),
        Frame::new(1, Message::Kill),
        Frame::new(
            1,
            Message::Resize(TtySize {
                rows: 50,
                cols: 200,
            }),
        ),
        Frame::new(1, Message::StdinClosed),
        Frame::new(3, Message::FileChunk(vec![1; 1000])),
        Frame::new(3, Message::FileEnd),
        Frame::new(3, Message::FsStat(meta(FileType::Symlink))),
        Frame::new(
            3,
            Message::FsDirEntries(vec![
                DirEntry {
                    name: "a".into(),
                    metadata: meta(FileType::File),
                },
                DirEntry {
                    name: "dir".into(),
                    metadata: meta(FileType::Dir),
                },
            ]),
        ),
        Frame::new(3, Message::FsDirEntries(vec![])),
        Frame::new(3, Message::FsDone { bytes: 1 << 40 }),
    ];
    for (i, kind) in ErrorKind::ALL.iter().enumerate() {
        m.push(Frame::new(
            i as u32,
            Message::Error(RemoteError {
                kind: *kind,
                errno: i as i32,
                message: format!("{kind:?} /some/path"),
            }),
        ));
    }
    for ft in [
        FileType::File,
        FileType::Dir,
        FileType::BlockDevice,
        FileType::CharDevice,
        FileType::Fifo,
        FileType::Socket,
    ] {
        m.push(Frame::new(9, Message::FsStat(meta(ft))));
    }
    let requests = [
        FsRequest::Read {
            path: "/etc/passwd".into(),
            offset: 10,
            len: Some(100),
        },
        FsRequest::Read {
            path: "/big".into(),
            offset: 0,
            len: None,
        },
        FsRequest::Write {
            path: "/tmp/x".into(),
            mode: WriteMode::Truncate,
            perm: 0o644,
        },
        FsRequest::Write {
            path: "/tmp/x".into(),
            mode: WriteMode::Append,
            perm: 0o600,
        },
        FsRequest::Write {
            path: "/tmp/x".into(),
            mode: WriteMode::CreateNew,
            perm: 0,
        },
        FsRequest::Stat {
            path: "/".into(),
            follow_symlinks: true,
        },
        FsRequest::Stat {
            path: "/link".into(),
            follow_symlinks: false,
        },
        FsRequest::List { path: "/".into() },
        FsRequest::Mkdir {
            path: "/a/b".into(),
            recursive: true,
            perm: 0o755,
        },
        FsRequest::Remove {
            path: "/f".into(),
            mode: RemoveMode::File,
        },
        FsRequest::Remove {
            path: "/d".into(),
            mode: RemoveMode::EmptyDir,
        },
        FsRequest::Remove {
            path: "/d".into(),
            mode: RemoveMode::Recursive,
        },
        FsRequest::Rename {
            from: "/a".into(),
            to: "/b".into(),
        },
        FsRequest::Copy {
            from: "/a".into(),
            to: "/c".into(),
        },
    ];
    for (i, r) in requests.into_iter().enumerate() {
        m.push(Frame::new(100 + i as u32, Message::FsRequest(r)));
    }
    m
}

#[test]
fn every_message_kind_round_trips() {
    let frames = samples();
    for kind in MessageKind::ALL {
        assert!(
            frames.iter().any(|f| f.message.kind() == *kind),
            "no sample for {kind}"
        );
        assert_eq!(MessageKind::from_u8(*kind as u8), Some(*kind));
    }
    for frame in &frames {
        let bytes = encode(frame);
        assert_eq!(
            bytes.len() - 4,
            u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize
        );
        let (decoded, used) = decode_frame(&bytes).unwrap().expect("complete frame");
        assert_eq!(&decoded, frame);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn back_to_back_frames_decode_in_order() {
    let frames = samples();
    let mut bytes = Vec::new();
    for f in &frames {
        encode_frame(f, &mut bytes).unwrap();
    }
    let mut at = 0;
    for f in &frames {
        let (decoded, used) = decode_frame(&bytes[at..]).unwrap().unwrap();
        assert_eq!(&decoded, f);
        at += used;
    }
    assert_eq!(at, bytes.len());
}

#[test]
fn every_strict_prefix_needs_more() {
    for frame in samples() {
        let bytes = encode(&frame);
        for end in 0..bytes.len() {
            assert!(
                matches!(decode_frame(&bytes[..end]), Ok(None)),
                "prefix {end} of {:?}",
                frame.message.kind()
            );
        }
    }
}

#[test]
fn documented_layout_of_a_small_frame() {
    // WindowUpdate{increment: 0x01020304} on stream 9.
    let bytes = encode(&Frame::new(
        9,
        Message::WindowUpdate {
            increment: 0x0102_0304,
        },
    ));
    assert_eq!(bytes, [9, 0, 0, 0, 0x08, 9, 0, 0, 0, 4, 3, 2, 1]);
    // Hello starts with the magic, then min/max versions, then the string.
    let bytes = encode(&Frame::new(
        0,
        Message::Hello(Hello {
            versions: VersionRange { min: 1, max: 2 },
            software: "x".into(),
        }),
    ));
    assert_eq!(
        bytes,
        [
            18, 0, 0, 0, 0x01, 0, 0, 0, 0, b'M', b'S', b'B', b'A', 1, 0, 2, 0, 1, 0, 0, 0, b'x'
        ]
    );
}

fn frame_bytes(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = ((payload.len() + 5) as u32).to_le_bytes().to_vec();
    b.push(kind);
    b.extend_from_slice(&stream.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn decode_err(bytes: &[u8]) -> ProtocolErrorKind {
    reason(decode_frame(bytes).expect_err("must be refused"))
}

#[test]
fn malformed_frames_are_refused_with_precise_reasons() {
    // Length below the header.
    assert_eq!(
        decode_err(&[4, 0, 0, 0]),
        ProtocolErrorKind::FrameTooShort { len: 4 }
    );
    // Unknown kind.
    assert_eq!(
        decode_err(&frame_bytes(0x7f, 1, &[])),
        ProtocolErrorKind::UnknownKind { kind: 0x7f }
    );
    // Connection-level kind on a stream, stream kind on stream 0.
    assert_eq!(
        decode_err(&frame_bytes(0x04, 1, &[0; 8])),
        ProtocolErrorKind::WrongStream {
            kind: MessageKind::Ping,
            stream: 1
        }
    );
    assert_eq!(
        decode_err(&frame_bytes(0x18, 0, &[])),
        ProtocolErrorKind::WrongStream {
            kind: MessageKind::Kill,
            stream: 0
        }
    );
    // Trailing bytes.
    assert_eq!(
        decode_err(&frame_bytes(0x18, 1, &[0])),
        ProtocolErrorKind::TrailingBytes {
            kind: MessageKind::Kill,
            extra: 1
        }
    );
    // Truncated field.
    assert_eq!(
        decode_err(&frame_bytes(0x11, 1, &[1, 2])),
        ProtocolErrorKind::Truncated { what: "pid" }
    );
    // Bad UTF-8 in a string.
    let mut p = vec![1, 0, 0, 0];
    p.extend_from_slice(&[1, 0, 0, 0, 0xff]);
    assert_eq!(
        decode_err(&frame_bytes(0x10, 1, &p)),
        ProtocolErrorKind::InvalidUtf8 { what: "argument" }
    );
    // A string length past the payload: refused, nothing allocated.
    let p = [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        decode_err(&frame_bytes(0x10, 1, &p)),
        ProtocolErrorKind::Truncated { what: "argument" }
    );
    // A list count no payload could hold.
    assert_eq!(
        decode_err(&frame_bytes(0x24, 1, &[0xff, 0xff, 0xff, 0xff])),
        ProtocolErrorKind::Truncated {
            what: "dir entries"
        }
    );
    // Empty argv, zero window increment, bad nanoseconds.
    assert_eq!(
        decode_err(&frame_bytes(0x10, 1, &[0; 4])),
        ProtocolErrorKind::InvalidValue { what: "empty argv" }
    );
    assert_eq!(
        decode_err(&frame_bytes(0x08, 1, &[0; 4])),
        ProtocolErrorKind::InvalidValue {
            what: "window increment"
        }
    );
    let mut m = encode(&Frame::new(1, Message::FsStat(meta(FileType::File))));
    let n = m.len();
    m[n - 4..].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    assert_eq!(
        decode_err(&m),
        ProtocolErrorKind::InvalidValue {
            what: "mtime nanoseconds"
        }
    );
    // Bad tags: bool, option, enums.
    assert_eq!(
        decode_err(&frame_bytes(0x16, 1, &[2, 0, 0, 0, 0])),
        ProtocolErrorKind::InvalidTag {
            what: "exit status",
            tag: 2
        }
    );
    assert_eq!(
        decode_err(&frame_bytes(0x16, 1, &[1, 9, 0, 0, 0, 2])),
        ProtocolErrorKind::InvalidTag {
            what: "core dumped",
            tag: 2
        }
    );
    assert_eq!(
        decode_err(&frame_bytes(0x09, 1, &[0, 0, 0, 0, 0, 0, 0, 0, 0])),
        ProtocolErrorKind::InvalidTag {
            what: "error kind",
            tag: 0
        }
    );
    assert_eq!(
        decode_err(&frame_bytes(0x20, 1, &[8])),
        ProtocolErrorKind::InvalidTag {
            what: "fs operation",
            tag: 8
        }
    );
    // Bad magic.
    assert_eq!(
        decode_err(&frame_bytes(0x01, 0, b"HTTP/1.1 200")),
        ProtocolErrorKind::BadMagic { got: *b"HTTP" }
    );
}

#[test]
fn oversize_lengths_are_refused_from_the_prefix_alone() {
    // Only the 4 length bytes are present: refused without waiting for (or
    // allocating) the announced body.
    for len in [MAX_BODY_LEN + 1, u32::MAX] {
        assert_eq!(
            decode_err(&len.to_le_bytes()),
            ProtocolErrorKind::FrameTooLarge {
                len: u64::from(len),
                max: MAX_BODY_LEN
            }
        );
    }
    // The largest legal frame is accepted.
    let frame = Frame::new(1, Message::Stdout(vec![7; MAX_PAYLOAD_LEN as usize]));
    let bytes = encode(&frame);
    assert_eq!(bytes.len(), 4 + MAX_BODY_LEN as usize);
    assert_eq!(decode_frame(&bytes).unwrap().unwrap().0, frame);
    // One byte more cannot be encoded, and the output buffer is untouched.
    let mut out = vec![1, 2, 3];
    let err = encode_frame(
        &Frame::new(1, Message::Stdout(vec![7; MAX_PAYLOAD_LEN as usize + 1])),
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(
        reason(err),
        ProtocolErrorKind::FrameTooLarge { .. }
    ));
    assert_eq!(out, [1, 2, 3]);
    // Neither can a too-large non-data message, nor a frame on a wrong stream.
    let big = Frame::new(
        1,
        Message::ExecStart(ExecStart {
            argv: vec!["x".repeat(MAX_PAYLOAD_LEN as usize)],
            env: vec![],
            cwd: None,
            user: None,
            tty: None,
            stdin: StdinMode::Null,
        }),
    );
    assert!(matches!(
        reason(encode_frame(&big, &mut out).unwrap_err()),
        ProtocolErrorKind::FrameTooLarge { .. }
    ));
    assert!(matches!(
        reason(encode_frame(&Frame::new(0, Message::Kill), &mut out).unwrap_err()),
        ProtocolErrorKind::WrongStream { .. }
    ));
    assert_eq!(out, [1, 2, 3]);
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn fuzz_iterations() -> usize {
    std::env::var("MSB_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// Decoding must not panic; whatever it accepts must re-encode to exactly the
/// bytes it consumed (the encoding is canonical).
fn check(bytes: &[u8]) -> bool {
    match decode_frame(bytes) {
        Ok(Some((frame, used))) => {
            assert!(used <= bytes.len());
            assert_eq!(encode(&frame), &bytes[..used], "{frame:?}");
            true
        }
        Ok(None) => {
            // Need more: only possible when the announced frame is longer.
            assert!(
                bytes.len() < 4
                    || bytes.len()
                        < 4 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize
            );
            false
        }
        Err(Error::AgentProtocol { .. }) => false,
        Err(e) => panic!("decoding gave a non-protocol error: {e:?}"),
    }
}

#[test]
fn fuzz_decode_never_panics_and_accepted_frames_round_trip() {
    let iters = fuzz_iterations();
    let seeds: Vec<Vec<u8>> = samples().iter().map(encode).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0usize;
    for i in 0..iters {
        let bytes = match i % 3 {
            // Pure noise.
            0 => (0..rng.below(48)).map(|_| rng.next() as u8).collect(),
            // A consistent header (known kind, plausible stream) over a noise
            // payload, so decoding gets past the header checks.
            1 => {
                let kinds = MessageKind::ALL;
                let kind = kinds[rng.below(kinds.len())] as u8;
                let payload: Vec<u8> = (0..rng.below(64))
                    .map(|_| match rng.below(4) {
                        0 => 0,
                        1 => 1,
                        _ => rng.next() as u8,
                    })
                    .collect();
                frame_bytes(kind, rng.below(3) as u32, &payload)
            }
            // Mutations of valid frames.
            _ => {
                let mut b = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(4) {
                    match rng.below(6) {
                        0 | 1 if !b.is_empty() => {
                            let at = rng.below(b.len());
                            b[at] = rng.next() as u8;
                        }
                        2 if !b.is_empty() => {
                            let at = rng.below(b.len());
                            b[at] ^= 1 << rng.below(8);
                        }
                        3 => {
                            let at = rng.below(b.len() + 1);
                            b.insert(at, rng.next() as u8);
                        }
                        4 if !b.is_empty() => {
                            b.remove(rng.below(b.len()));
                        }
                        _ => b.truncate(rng.below(b.len() + 1)),
                    }
                }
                // Often keep the length field consistent so the payload
                // decoder, not the length check, sees the damage.
                if rng.below(2) == 0 && b.len() >= 9 {
                    let len = (b.len() - 4) as u32;
                    b[..4].copy_from_slice(&len.to_le_bytes());
                }
                b
            }
        };
        if check(&bytes) {
            accepted += 1;
        }
    }
    // The generators must reach the payload decoders, not only the header checks.
    assert!(
        iters < 1000 || accepted > iters / 100,
        "only {accepted} of {iters} accepted"
    );
}

mod framing_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_survive_one_byte_writes_and_partial_reads() {
        let frames = samples();
        let mut bytes = Vec::new();
        for f in &frames {
            encode_frame(f, &mut bytes).unwrap();
        }
        // A 1-byte pipe: every read returns at most one byte.
        let (mut tx, rx) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for b in bytes {
                tx.write_all(&[b]).await.unwrap();
                tx.flush().await.unwrap();
            }
        });
        let mut reader = FrameReader::new(rx);
        for f in &frames {
            assert_eq!(&reader.read_frame().await.unwrap().unwrap(), f);
        }
        writer.await.unwrap();
        assert!(reader.read_frame().await.unwrap().is_none(), "clean EOF");
    }

    #[tokio::test]
    async fn writer_and_reader_agree_including_max_size_data() {
        let (a, b) = tokio::io::duplex(4096);
        let big = vec![0xab; MAX_PAYLOAD_LEN as usize];
        let big2 = big.clone();
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a);
            for f in samples() {
                w.feed(&f).await.unwrap();
            }
            w.flush().await.unwrap();
            w.write_data(MessageKind::Stdout, 3, &big2).await.unwrap();
            w.write_data(MessageKind::FileChunk, 4, b"tail")
                .await
                .unwrap();
            assert!(w.write_data(MessageKind::Kill, 4, b"").await.is_err());
            assert!(w.write_data(MessageKind::Stdin, 0, b"x").await.is_err());
            w.shutdown().await.unwrap();
        });
        let mut r = FrameReader::new(b);
        for f in samples() {
            assert_eq!(r.read_frame().await.unwrap().unwrap(), f);
        }
        assert_eq!(
            r.read_frame().await.unwrap().unwrap(),
            Frame::new(3, Message::Stdout(big))
        );
        assert_eq!(
            r.read_frame().await.unwrap().unwrap(),
            Frame::new(4, Message::FileChunk(b"tail".to_vec()))
        );
        assert!(r.read_frame().await.unwrap().is_none());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn eof_mid_frame_is_a_typed_error() {
        let bytes = encode(&Frame::new(1, Message::Stdout(b"hello".to_vec())));
        for cut in 1..bytes.len() {
            let (mut tx, rx) = tokio::io::duplex(64);
            tx.write_all(&bytes[..cut]).await.unwrap();
            drop(tx);
            let err = FrameReader::new(rx).read_frame().await.unwrap_err();
            let expected = if cut < 4 { 4 } else { bytes.len() };
            assert_eq!(
                reason(err),
                ProtocolErrorKind::TruncatedFrame { got: cut, expected }
            );
        }
    }

    #[tokio::test]
    async fn hostile_length_is_refused_without_reading_the_body() {
        let (mut tx, rx) = tokio::io::duplex(64);
        // Announce a 4 GiB frame and keep the connection open: the reader must
        // refuse at once rather than wait for (or allocate) the body.
        tx.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let mut reader = FrameReader::new(rx);
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), reader.read_frame())
            .await
            .expect("refused promptly")
            .unwrap_err();
        assert!(matches!(
            reason(err),
            ProtocolErrorKind::FrameTooLarge { .. }
        ));
        drop(tx);
    }

    #[tokio::test]
    async fn read_frame_is_cancel_safe() {
        let frame = Frame::new(1, Message::Stdout(vec![5; 10_000]));
        let bytes = encode(&frame);
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(rx);
        tx.write_all(&bytes[..5000]).await.unwrap();
        // Cancel a read that has consumed half a frame.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), reader.read_frame()).await;
        assert!(pending.is_err());
        tx.write_all(&bytes[5000..]).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), frame);
    }
}
