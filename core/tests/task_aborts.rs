//! Aborting a task never waits for its poll: a receiver deactivated while its future is being
//! polled on another thread (blocked there, perhaps on Hermes itself) is deactivated at once,
//! and the poller drops the future as its poll returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use hermes_core::{Activation, Config, Context, Router};

/// Sets its flag when dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A future whose first poll blocks its thread until `release` says so, then is pending.
struct Blocking {
    polling: mpsc::Sender<()>,
    release: Mutex<mpsc::Receiver<()>>,
    _dropped: Dropped,
}

impl std::future::Future for Blocking {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        let _ = self.polling.send(());
        let _ = self.release.lock().unwrap().recv();
        Poll::Pending
    }
}

#[test]
fn a_receiver_whose_future_is_being_polled_is_deactivated_without_waiting_for_the_poll() {
    let now = Instant::now();
    let (polling, polled) = mpsc::channel();
    let (release, released) = mpsc::channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let future = Mutex::new(Some(Blocking {
        polling,
        release: Mutex::new(released),
        _dropped: Dropped(Arc::clone(&dropped)),
    }));
    let factory = move |_: &u8| {
        let mut future = future.lock().unwrap().take();
        Activation::ready(move |ctx: &mut Context<'_, u8, ()>, ()| {
            if let Some(future) = future.take() {
                ctx.spawn(future, |()| ());
            } else {
                ctx.stop();
            }
        })
    };
    let mut router = Router::new(Config::default());
    router.send(1, ()).unwrap();
    while let Some(c) = router.poll_command() {
        router.handle(c, &factory, now).unwrap();
    }
    let mut task = router.poll_task().unwrap();
    let poller = std::thread::spawn(move || {
        std::pin::Pin::new(&mut task).poll(&mut TaskContext::from_waker(Waker::noop()))
    });
    polled
        .recv_timeout(Duration::from_secs(10))
        .expect("the poll began");
    // The receiver stops while its future is blocked in a poll: no waiting for it.
    router.send(1, ()).unwrap();
    while let Some(c) = router.poll_command() {
        router.handle(c, &factory, now).unwrap();
    }
    assert_eq!(router.stats().deactivations, 1);
    assert_eq!(router.tasks_in_flight(), 0);
    assert!(!dropped.load(Ordering::SeqCst), "the poll still holds it");
    release.send(()).unwrap();
    let polled = poller.join().unwrap();
    assert!(matches!(polled, Poll::Ready(None)), "aborted: no outcome");
    assert!(dropped.load(Ordering::SeqCst), "its poller dropped it");
}
