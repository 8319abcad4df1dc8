//! Memory a limiter owns. Large regions are mapped directly, aligned to
//! 2 MiB, with transparent huge pages advised before the first touch:
//! lookups at random over hundreds of MiB otherwise spend most of their time
//! in TLB misses. Small regions (and every region under Miri) come from the
//! heap. Either way the memory starts zeroed and is freed once, on drop.

// Under loom a region is made of loom's atomics, not of this memory.
#![cfg_attr(loom, allow(dead_code))]

use crate::error::Error;

#[cfg(not(any(miri, loom)))]
const HUGE: usize = 2 << 20;

pub(crate) struct Owned {
    ptr: *mut u8,
    kind: Kind,
}

enum Kind {
    Heap(std::alloc::Layout),
    #[cfg_attr(any(miri, loom), allow(dead_code))]
    Map {
        base: *mut u8,
        len: usize,
    },
}

impl Owned {
    /// Zeroed memory of `size` bytes aligned to `align` (at most 4096).
    pub(crate) fn new(size: usize, align: usize) -> Result<Owned, Error> {
        #[cfg(not(any(miri, loom)))]
        if size >= 4 * HUGE {
            if let Some(m) = Owned::map(size) {
                return Ok(m);
            }
        }
        let layout = std::alloc::Layout::from_size_align(size, align)
            .map_err(|_| Error::InvalidArgument("region size overflows"))?;
        // SAFETY: a region has a non-zero size (a header at least).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::OutOfMemory);
        }
        Ok(Owned { ptr, kind: Kind::Heap(layout) })
    }

    #[cfg(not(any(miri, loom)))]
    fn map(size: usize) -> Option<Owned> {
        let len = size.checked_add(HUGE)?;
        // SAFETY: an anonymous private mapping; the result is checked.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base.cast::<u8>();
        let ptr = (base as usize).next_multiple_of(HUGE) as *mut u8;
        // SAFETY: [ptr, ptr + size) lies in the mapping (ptr - base < HUGE);
        // the advice changes no contents and failure is harmless.
        unsafe { libc::madvise(ptr.cast(), size / HUGE * HUGE, libc::MADV_HUGEPAGE) };
        Some(Owned { ptr, kind: Kind::Map { base, len } })
    }

    /// Takes ownership of a mapping of `len` bytes at `base` (from `mmap`),
    /// unmapped on drop.
    #[cfg(not(loom))]
    pub(crate) fn mapped(base: *mut u8, len: usize) -> Owned {
        Owned { ptr: base, kind: Kind::Map { base, len } }
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        match self.kind {
            // SAFETY: allocated in `new` with this layout; freed exactly once.
            Kind::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr, layout) },
            #[cfg(not(any(miri, loom)))]
            // SAFETY: unmapping exactly the mapping made in `map`, once.
            Kind::Map { base, len } => unsafe {
                libc::munmap(base.cast(), len);
            },
            #[cfg(any(miri, loom))]
            Kind::Map { .. } => {}
        }
    }
}
