//! Commands: the work the router asks its driver to do.

use crate::Addr;

/// Work for the driver. Each command is emitted once and must be handled once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// A message arrived for an ID with no live receiver: call the factory for
    /// [`Router::id`](crate::Router::id) and pass the result to
    /// [`Router::activate`](crate::Router::activate). Messages queue meanwhile.
    Activate(Addr),
    /// A live receiver has messages and is not running: [`Router::run`](crate::Router::run) it
    /// inline, or [`check_out`](crate::Router::check_out) / [`check_in`](crate::Router::check_in).
    Run(Addr),
    /// A receiver is to be deactivated (idle, stopped, panicked or closing): run its hook the
    /// same two ways as `Run`.
    Deactivate(Addr),
}

impl Command {
    /// The receiver the command is about.
    pub fn addr(self) -> Addr {
        match self {
            Command::Activate(a) | Command::Run(a) | Command::Deactivate(a) => a,
        }
    }
}
