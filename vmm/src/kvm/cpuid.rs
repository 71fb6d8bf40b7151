//! CPUID for each vCPU: KVM's supported set, normalised per vCPU (APIC ids, topology,
//! hypervisor bit) so guests see a consistent SMP machine.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: hyper-threading / multi-core package.
const EDX_HTT: u32 = 1 << 28;

/// KVM's supported CPUID table.
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

/// Number of bits needed to hold `n - 1` distinct ids (ceil(log2(n))).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Returns `base` adjusted for vCPU `id` of `count`: one package, one thread per core,
/// `count` cores; APIC id = `id`.
pub fn for_vcpu(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    let count32 = u32::from(count);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | ((count32 & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; threads sharing this cache in EAX[25:14].
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count32 - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count32 - 1) << 26) | (sharing << 14);
            }
            0xb | 0x1f => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = id_bits(count32);
                        e.ebx = count32;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            0x8000_0008 => {
                // ECX[7:0]: number of cores - 1.
                e.ecx = (e.ecx & !0xff) | ((count32 - 1) & 0xff);
            }
            _ => {}
        }
    }
    cpuid
}

/// CPUID features (leaf, index, register, bits) that migration compares between source and
/// destination: the destination must offer everything the source's guest may be using.
pub fn feature_words(cpuid: &CpuId) -> Vec<(u32, u32, [u32; 4])> {
    cpuid
        .as_slice()
        .iter()
        .filter(|e| matches!(e.function, 1 | 7 | 0xd | 0x8000_0001 | 0x4000_0001))
        .map(|e| {
            let regs = if e.function == 1 {
                // Mask the per-vCPU APIC id / counts out of EBX.
                [e.eax, 0, e.ecx, e.edx]
            } else {
                [e.eax, e.ebx, e.ecx, e.edx]
            };
            (e.function, e.index, regs)
        })
        .collect()
}

/// Lists the features present in `wanted` but absent from `offered`, as `leaf.index:reg bits`.
pub fn missing_features(
    wanted: &[(u32, u32, [u32; 4])],
    offered: &[(u32, u32, [u32; 4])],
) -> Vec<String> {
    let names = ["eax", "ebx", "ecx", "edx"];
    let mut missing = Vec::new();
    for (f, i, regs) in wanted {
        let other = offered
            .iter()
            .find(|(of, oi, _)| of == f && oi == i)
            .map(|x| x.2)
            .unwrap_or([0; 4]);
        // Leaf 0xd EAX/EBX are sizes, leaf 1 EAX is the signature: compare feature bits only.
        let compared: &[usize] = match f {
            1 => &[2, 3],
            0xd => &[0],
            _ => &[0, 1, 2, 3],
        };
        for &r in compared {
            let lack = regs[r] & !other[r];
            if lack != 0 {
                missing.push(format!("cpuid {f:#x}.{i}:{} bits {lack:#x}", names[r]));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }

    #[test]
    fn missing_features_are_listed() {
        let src = vec![(1, 0, [0, 0, 0b111, 0])];
        let dst = vec![(1, 0, [0, 0, 0b101, 0])];
        let m = missing_features(&src, &dst);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("ecx"));
        assert!(missing_features(&dst, &src).is_empty());
    }
}
