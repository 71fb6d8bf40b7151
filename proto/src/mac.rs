//! The MAC addresses NovaCron gives the NICs of a VM it creates from another one (a clone, an
//! imported backup): locally administered, derived from the new VM's id so that two VMs made
//! from one source never share an address. One rule for the controller and the agents.

/// The MAC of NIC `index` of VM `vm_id`: `52:54:00` and three bytes of an FNV-1a hash of both.
pub fn for_vm(vm_id: &str, index: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vm_id.bytes().chain(index.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

#[cfg(test)]
mod tests {
    #[test]
    fn distinct_per_vm_and_nic() {
        let a = super::for_vm("a", 0);
        assert!(a.starts_with("52:54:00:"), "{a}");
        assert_ne!(a, super::for_vm("a", 1));
        assert_ne!(a, super::for_vm("b", 0));
        assert_eq!(a, super::for_vm("a", 0));
    }
}
