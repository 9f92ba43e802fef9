//! HTTP stand-ins for the tests, built with actix-web: a server on a free
//! loopback port, on a thread with its own actix system (so it serves
//! whatever runtime the test runs on), stopped when dropped.

use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};

/// A running stand-in; stops on drop.
pub struct FakeServer {
    pub url: String,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Serves the routes `configure` sets up (state goes in with
    /// `cfg.app_data`) on one worker.
    pub fn start<F>(configure: F) -> FakeServer
    where
        F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || App::new().configure(configure.clone()))
                    .workers(1)
                    .disable_signals()
                    .listen(listener)
                    .expect("listen")
                    .run();
                let _ = tx.send(server.handle());
                let _ = server.await;
            });
        });
        let handle = rx.recv().expect("the fake server started");
        FakeServer {
            url,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        // The stop command is sent by the call; the returned future only
        // waits for it, which joining the thread does too.
        drop(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An answer that never arrives: the connection breaks before the client
/// has a whole answer, as when a proxy or the network loses a reply.
pub fn lost_reply() -> HttpResponse {
    HttpResponse::Ok().streaming(futures_util::stream::once(async {
        Err::<web::Bytes, _>(std::io::Error::other("the reply is lost"))
    }))
}
