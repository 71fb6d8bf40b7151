//! The C memory functions the compiler expects (`memcpy`, `memmove`, `memset`, `memcmp`,
//! `bcmp`), written with string instructions so they cannot be compiled back into calls
//! to themselves.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dst` (non-overlapping).
///
/// # Safety
/// `dst` and `src` must be valid for `n` bytes and must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; DF is clear in ring 3.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
    dst
}

/// Copies `n` bytes from `src` to `dst`; the ranges may overlap.
///
/// # Safety
/// `dst` and `src` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst is below src or past the end of src: a forward copy is safe.
        // SAFETY: the caller guarantees both ranges are valid.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: the caller guarantees both ranges are valid; copying backwards (DF set,
        // starting at the last byte) handles dst overlapping the tail of src. DF is
        // cleared again before returning, as the ABI requires.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dst.add(n).wrapping_sub(1) => _,
                inout("rsi") src.add(n).wrapping_sub(1) => _,
                options(nostack)
            );
        }
        dst
    }
}

/// Fills `n` bytes at `dst` with the low byte of `c`.
///
/// # Safety
/// `dst` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid; DF is clear in ring 3.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") c as u8,
            options(nostack, preserves_flags)
        );
    }
    dst
}

/// Compares `n` bytes; returns the difference of the first differing bytes (as unsigned).
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let left: *const u8;
    let right: *const u8;
    // SAFETY: the caller guarantees both ranges are valid; `repe cmpsb` stops after the
    // first difference (or after n bytes) with rsi/rdi one past the last compared byte.
    unsafe {
        asm!(
            "repe cmpsb",
            inout("rcx") n => _,
            inout("rsi") a => left,
            inout("rdi") b => right,
            options(nostack, readonly)
        );
    }
    // SAFETY: at least one byte was compared, so both pointers moved past a valid byte.
    let (x, y) = unsafe { (*left.sub(1), *right.sub(1)) };
    x as i32 - y as i32
}

/// Like `memcmp`, but only zero/non-zero is meaningful.
///
/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
