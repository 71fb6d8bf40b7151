//! NovaCron VMM library.
