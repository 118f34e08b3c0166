//! The version handshake.
//!
//! Both sides send [`Hello`] as their first frame without waiting for the
//! other (so neither order of connecting nor of speaking matters), then read
//! the peer's. Each side independently picks the highest version both ranges
//! contain; with none, each side refuses with
//! [`Error::AgentVersionMismatch`] (the agent also sends an `Error` of kind
//! [`ErrorKind::IncompatibleVersion`] on stream 0 for the host's logs). On a
//! match the agent sends [`Ready`] naming the version, and from then on both
//! sides speak it.
//!
//! Neither function has a timeout: wrap them in `tokio::time::timeout`.

use tokio::io::{AsyncRead, AsyncWrite};

use super::framing::{FrameReader, FrameWriter};
use super::protocol::*;
use crate::{Error, Result};

/// The host side: sends `Hello`, reads the agent's `Hello` and `Ready`.
pub async fn host_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    supported: VersionRange,
    software: &str,
) -> Result<Ready>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let peer = exchange_hellos(reader, writer, supported, software).await?;
    let Some(version) = supported.negotiate(peer.versions) else {
        return Err(Error::AgentVersionMismatch {
            local: supported,
            remote: peer.versions,
            peer_software: peer.software,
        });
    };
    let frame = reader.expect_frame("Ready").await?;
    match frame.message {
        Message::Ready(ready) if frame.stream == CONNECTION_STREAM => {
            if ready.version != version {
                return Err(ProtocolErrorKind::VersionNotNegotiated {
                    negotiated: version,
                    ready: ready.version,
                }
                .into());
            }
            Ok(ready)
        }
        Message::Error(e) if frame.stream == CONNECTION_STREAM => {
            Err(ProtocolErrorKind::PeerError { kind: e.kind }.into())
        }
        other => Err(ProtocolErrorKind::UnexpectedMessage {
            expected: "Ready",
            got: other.kind(),
        }
        .into()),
    }
}

/// The agent side: sends `Hello`, reads the host's, and sends `Ready` with
/// `timings` (or refuses). Returns the negotiated version and the host's
/// `Hello`.
pub async fn agent_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    supported: VersionRange,
    software: &str,
    timings: Vec<BootTiming>,
) -> Result<(u16, Hello)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let peer = exchange_hellos(reader, writer, supported, software).await?;
    let Some(version) = supported.negotiate(peer.versions) else {
        let refusal = RemoteError {
            kind: ErrorKind::IncompatibleVersion,
            errno: 0,
            message: format!(
                "agent {software} speaks {supported}, host {} offered {}",
                peer.software, peer.versions
            ),
        };
        // Best effort: the host reaches the same verdict from our Hello.
        let _ = writer
            .write_frame(&Frame::new(CONNECTION_STREAM, Message::Error(refusal)))
            .await;
        return Err(Error::AgentVersionMismatch {
            local: supported,
            remote: peer.versions,
            peer_software: peer.software,
        });
    };
    let ready = Ready {
        version,
        agent_version: software.to_owned(),
        timings,
    };
    writer
        .write_frame(&Frame::new(CONNECTION_STREAM, Message::Ready(ready)))
        .await?;
    Ok((version, peer))
}

/// Sends our `Hello`, then reads the peer's: both sides do the same, so
/// neither waits for the other to speak first.
async fn exchange_hellos<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    supported: VersionRange,
    software: &str,
) -> Result<Hello>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = Hello {
        versions: supported,
        software: software.to_owned(),
    };
    writer
        .write_frame(&Frame::new(CONNECTION_STREAM, Message::Hello(hello)))
        .await?;
    read_hello(reader).await
}

async fn read_hello<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<Hello> {
    let frame = reader.expect_frame("Hello").await?;
    match frame.message {
        Message::Hello(hello) => Ok(hello),
        other => Err(ProtocolErrorKind::UnexpectedMessage {
            expected: "Hello",
            got: other.kind(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    async fn run(host: VersionRange, agent: VersionRange) -> (Result<Ready>, Result<(u16, Hello)>) {
        let (h, a) = tokio::io::duplex(64);
        let (hr, hw) = tokio::io::split(h);
        let (ar, aw) = tokio::io::split(a);
        let host = async move {
            let (mut r, mut w) = (FrameReader::new(hr), FrameWriter::new(hw));
            host_handshake(&mut r, &mut w, host, "host-test").await
        };
        let timings = vec![BootTiming {
            phase: "mounts".into(),
            micros: 1234,
        }];
        let agent = async move {
            let (mut r, mut w) = (FrameReader::new(ar), FrameWriter::new(aw));
            agent_handshake(&mut r, &mut w, agent, "agent-test", timings).await
        };
        tokio::join!(host, agent)
    }

    #[tokio::test]
    async fn compatible_peers_agree_on_highest_common_version() {
        let (host, agent) = run(v(1, 3), v(2, 5)).await;
        let ready = host.unwrap();
        assert_eq!(ready.version, 3);
        assert_eq!(ready.agent_version, "agent-test");
        assert_eq!(ready.timings[0].micros, 1234);
        let (version, hello) = agent.unwrap();
        assert_eq!(version, 3);
        assert_eq!(hello.software, "host-test");

        let (host, _) = run(SUPPORTED_VERSIONS, SUPPORTED_VERSIONS).await;
        assert_eq!(host.unwrap().version, SUPPORTED_VERSIONS.max);
    }

    #[tokio::test]
    async fn incompatible_peers_are_refused_with_a_typed_error() {
        let (host, agent) = run(v(1, 1), v(2, 3)).await;
        match host.unwrap_err() {
            Error::AgentVersionMismatch {
                local,
                remote,
                peer_software,
            } => {
                assert_eq!((local, remote), (v(1, 1), v(2, 3)));
                assert_eq!(peer_software, "agent-test");
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(matches!(
            agent.unwrap_err(),
            Error::AgentVersionMismatch { remote, .. } if remote == v(1, 1)
        ));
    }

    #[tokio::test]
    async fn a_non_hello_first_frame_is_refused() {
        let (h, a) = tokio::io::duplex(1024);
        let (hr, hw) = tokio::io::split(h);
        let mut aw = FrameWriter::new(a);
        aw.write_frame(&Frame::new(0, Message::Ping { nonce: 1 }))
            .await
            .unwrap();
        let (mut r, mut w) = (FrameReader::new(hr), FrameWriter::new(hw));
        let err = host_handshake(&mut r, &mut w, SUPPORTED_VERSIONS, "h")
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            Error::AgentProtocol {
                reason: ProtocolErrorKind::UnexpectedMessage {
                    expected: "Hello",
                    got: MessageKind::Ping
                }
            }
        ));
    }

    #[tokio::test]
    async fn peer_closing_before_hello_is_typed() {
        let (h, a) = tokio::io::duplex(1024);
        drop(a);
        let (hr, hw) = tokio::io::split(h);
        let (mut r, mut w) = (FrameReader::new(hr), FrameWriter::new(hw));
        let err = host_handshake(&mut r, &mut w, SUPPORTED_VERSIONS, "h")
            .await
            .unwrap_err();
        // Writing the Hello may fail first (broken pipe) or reading finds EOF.
        assert!(matches!(
            err,
            Error::AgentIo { .. }
                | Error::AgentProtocol {
                    reason: ProtocolErrorKind::ConnectionClosed { awaiting: "Hello" }
                }
        ));
    }
}
