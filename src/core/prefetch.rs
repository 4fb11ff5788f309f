//! A hint to the processor that memory will be read soon.
//!
//! A pass over every lead (re-scoring) spends much of its time waiting for
//! each lead's boxes, scattered over the heap, to come in from memory one
//! after another; asking for the next leads' boxes while one is worked on
//! overlaps those waits. A hint changes no result.

/// Asks for the cache line holding `data`'s first byte.
#[inline(always)]
pub fn prefetch<T: ?Sized>(data: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let address: *const i8 = (data as *const T).cast();
        // SAFETY: a prefetch reads nothing and cannot fault; the address
        // is that of a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(address) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
