//! The persist contract every stateful component of a machine implements: it hands out its
//! typed state and restores it in place, so a snapshot or a migration is the composition of
//! the components' states (see `state::MachineState`) and no module knows another's getters.

/// A component whose state can be captured while the machine is paused and put back into a
/// freshly built component of the same shape (same configuration, same devices).
///
/// Components are shared with the vCPU and device threads, so both methods take `&self`; what
/// a restore needs beyond the state (interrupt eventfds, console, guest memory, MSR list) the
/// component already holds from its construction.
pub trait Persist {
    /// The saved state: plain data, serialisable into the state envelope.
    type State;
    /// Why capturing or restoring failed.
    type Error;

    /// Captures the component's state (call with the machine paused).
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// Replaces the component's state with `state`.
    fn restore(&self, state: &Self::State) -> Result<(), Self::Error>;
}
