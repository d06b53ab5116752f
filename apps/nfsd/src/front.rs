//! The TCP front: ONC RPC record marking (RFC 5531 section 11) on each
//! connection; every call goes through [`Server::call`], and its reply is
//! written once the state it reports is durable. A connection's calls run
//! in order while earlier replies wait for their commit (pipelining).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use fernfs::protocol::rpc::MAX_RPC_RECORD_LENGTH;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::server::{Reply, Server};

/// Last-fragment bit of a record mark.
const LAST: u32 = 1 << 31;
/// Bytes read from a connection at once.
const READ_BUFFER: usize = 128 << 10;

/// Reads one record (its fragments joined); `None` at a clean end of the
/// stream between records.
pub async fn read_record<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut rec = Vec::new();
    let mut first = true;
    loop {
        let mut mark = [0u8; 4];
        match r.read_exact(&mut mark).await {
            Err(e) if first && e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        };
        first = false;
        let mark = u32::from_be_bytes(mark);
        let len = (mark & !LAST) as usize;
        if rec.len() + len > MAX_RPC_RECORD_LENGTH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("RPC record longer than {MAX_RPC_RECORD_LENGTH} bytes"),
            ));
        }
        let at = rec.len();
        rec.resize(at + len, 0);
        r.read_exact(&mut rec[at..]).await?;
        if mark & LAST != 0 {
            return Ok(Some(rec));
        }
    }
}

/// Writes `body` as one record of one fragment.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32 | LAST).to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await
}

/// Accepts connections forever.
pub async fn serve(listener: TcpListener, server: Arc<Server>) -> io::Result<()> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(sock, peer.ip(), server).await {
                log::debug!("vsic-nfsd: connection from {peer}: {e}");
            }
        });
    }
}

async fn connection(
    sock: tokio::net::TcpStream,
    ip: IpAddr,
    server: Arc<Server>,
) -> io::Result<()> {
    let (rd, mut wr) = sock.into_split();
    // Buffered: a record mark and its body (and the calls a client
    // pipelined) come in one read system call, not two per call.
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let waiter = server.clone();
    let writer = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            waiter.durable(r.after).await;
            write_record(&mut wr, &r.bytes).await?;
        }
        Ok::<(), io::Error>(())
    });
    let read = async {
        while let Some(rec) = read_record(&mut rd).await? {
            if let Some(reply) = server.call(&rec, ip).await {
                if tx.send(reply).is_err() {
                    break; // the writer failed: the connection is gone
                }
            }
        }
        Ok::<(), io::Error>(())
    }
    .await;
    drop(tx);
    let written = writer.await.unwrap_or(Ok(()));
    read.and(written)
}
