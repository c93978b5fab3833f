//! TLS inside PRELOGIN (MS-TDS 2.2.6.5): not built yet.

use crate::error::Error;
use crate::tds::Message;
use tokio::net::TcpStream;

pub struct Acceptor;

impl Acceptor {
    pub fn self_signed() -> Result<Acceptor, Error> {
        Err(Error::Tls("TLS is not supported yet".into()))
    }
    pub async fn accept(&self, _sock: TcpStream) -> Result<TcpStream, Error> {
        Err(Error::Tls("TLS is not supported yet".into()))
    }
    pub async fn accept_login_only(&self, _sock: TcpStream) -> Result<(TcpStream, Message), Error> {
        Err(Error::Tls("TLS is not supported yet".into()))
    }
}
