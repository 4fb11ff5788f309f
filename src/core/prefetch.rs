//! A hint to the processor that memory will be read soon.
//!
//! A pass over every lead (re-scoring) spends much of its time waiting for
//! each lead's boxes, scattered over the heap, to come in from memory one
//! after another; asking for the next leads' boxes while one is worked on
//! overlaps those waits. A hint changes no result.

/// Asks for the cache line holding `data`'s first byte.
#[inline(always)]
pub fn prefetch<T: ?Sized>(data: &T) {
    prefetch_address((data as *const T).cast());
}

/// Asks for every cache line of `data`, up to its first 512 bytes: a
/// lead's state and its lists span several lines each.
#[inline(always)]
pub fn prefetch_all<T: ?Sized>(data: &T) {
    const LINE: usize = 64;
    const MOST_BYTES: usize = 512;
    let start: *const u8 = (data as *const T).cast();
    let size = std::mem::size_of_val(data).min(MOST_BYTES);
    if size == 0 {
        return;
    }
    // From the line of the first byte to the line of the last.
    let into_line = start as usize % LINE;
    let lines = (into_line + size).div_ceil(LINE);
    let first = start.wrapping_sub(into_line);
    for line in 0..lines {
        prefetch_address(first.wrapping_add(line * LINE));
    }
}

#[inline(always)]
fn prefetch_address(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing and cannot fault, whatever the
        // address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
