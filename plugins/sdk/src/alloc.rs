//! The guest's global allocator: free lists of small blocks in front of the
//! standard library's allocator (dlmalloc on `wasm32-wasip2`).
//!
//! A transform allocates and frees the same few block sizes for every
//! message: the host's copies of each input's topic and payload (through
//! `cabi_realloc`), the parsed fields, the output payload and key, all
//! freed again after the call. A freed block of at most [`MAX_SMALL`] bytes
//! goes onto the free list of its size class and the next allocation of
//! that class takes it back: a few instructions instead of a dlmalloc
//! search, which in WebAssembly runs with the host's interruption checks in
//! every loop. At most [`MAX_CACHED`] bytes wait in the lists; beyond that,
//! blocks go back to dlmalloc, so a burst of small allocations does not
//! keep its memory from other sizes for good.
//!
//! Built only for WebAssembly without threads (the only way
//! `wasm32-wasip2` guests run), where there is one thread to serve. Turn
//! it off with `default-features = false` to use another allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes are multiples of this many bytes (dlmalloc's alignment on
/// wasm32).
const GRANULE: usize = 8;
/// Largest block size kept on a free list: 1 KiB holds the usual
/// `Vec<Field>` of 16 fields (64 bytes each on wasm32).
pub(crate) const MAX_SMALL: usize = 1024;
/// Most bytes kept on the free lists together.
pub(crate) const MAX_CACHED: usize = 1 << 20;
const CLASSES: usize = MAX_SMALL / GRANULE;

/// The allocator: see the module documentation.
pub struct SmallBlocks {
    state: UnsafeCell<State>,
}

struct State {
    /// Head of each class's free list; a free block's first word points to
    /// the next one.
    heads: [*mut u8; CLASSES],
    cached: usize,
}

// SAFETY: WebAssembly without the atomics feature has one thread, so
// nothing shares it. On other targets it is not `Sync`, so it cannot be a
// global allocator there (tests use it from one thread).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for SmallBlocks {}

impl SmallBlocks {
    /// An allocator with empty free lists.
    pub const fn new() -> Self {
        SmallBlocks {
            state: UnsafeCell::new(State {
                heads: [ptr::null_mut(); CLASSES],
                cached: 0,
            }),
        }
    }

    /// The class of a layout that the free lists serve: a size of
    /// `1..=MAX_SMALL` bytes aligned to at most [`GRANULE`].
    fn class(layout: Layout) -> Option<usize> {
        let size = layout.size();
        (size != 0 && size <= MAX_SMALL && layout.align() <= GRANULE).then(|| (size - 1) / GRANULE)
    }

    /// The layout a block of `class` is allocated with from the system.
    fn block(class: usize) -> Layout {
        // Cannot fail: at most MAX_SMALL bytes, aligned to GRANULE.
        unsafe { Layout::from_size_align_unchecked((class + 1) * GRANULE, GRANULE) }
    }
}

impl Default for SmallBlocks {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl GlobalAlloc for SmallBlocks {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = Self::class(layout) else {
            return System.alloc(layout);
        };
        let state = &mut *self.state.get();
        let head = state.heads[class];
        if head.is_null() {
            return System.alloc(Self::block(class));
        }
        state.heads[class] = *(head as *mut *mut u8);
        state.cached -= Self::block(class).size();
        head
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = Self::class(layout) else {
            return System.dealloc(ptr, layout);
        };
        let size = Self::block(class).size();
        let state = &mut *self.state.get();
        if state.cached + size > MAX_CACHED {
            return System.dealloc(ptr, Self::block(class));
        }
        *(ptr as *mut *mut u8) = state.heads[class];
        state.heads[class] = ptr;
        state.cached += size;
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Cannot fail: `GlobalAlloc::realloc` requires a valid new size.
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        match (Self::class(layout), Self::class(new)) {
            (None, None) => System.realloc(ptr, layout, new_size),
            (Some(a), Some(b)) if a == b => ptr,
            _ => {
                let fresh = self.alloc(new);
                if !fresh.is_null() {
                    ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_small_blocks_are_reused_by_their_class_only() {
        let a = SmallBlocks::new();
        let l24 = Layout::from_size_align(24, 8).unwrap();
        let l20 = Layout::from_size_align(20, 4).unwrap();
        let l40 = Layout::from_size_align(40, 8).unwrap();
        unsafe {
            let p = a.alloc(l24);
            p.write_bytes(7, 24);
            a.dealloc(p, l24);
            // 20 bytes is the same class as 24: the block comes back.
            assert_eq!(a.alloc(l20), p);
            // 40 bytes is another class: a new block.
            let q = a.alloc(l40);
            assert_ne!(q, p);
            a.dealloc(q, l40);
            a.dealloc(p, l20);
            assert_eq!((*a.state.get()).cached, 24 + 40);
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_to_large_blocks() {
        let a = SmallBlocks::new();
        let small = Layout::from_size_align(16, 8).unwrap();
        unsafe {
            let p = a.alloc(small);
            for i in 0..16 {
                *p.add(i) = i as u8;
            }
            // Same class: same block.
            assert_eq!(a.realloc(p, small, 12), p);
            let big = a.realloc(p, small, 4096);
            let bytes: Vec<u8> = (0..12).collect();
            assert_eq!(std::slice::from_raw_parts(big, 12), bytes);
            let big_layout = Layout::from_size_align(4096, 8).unwrap();
            let back = a.realloc(big, big_layout, 100);
            assert_eq!(std::slice::from_raw_parts(back, 12), bytes);
            a.dealloc(back, Layout::from_size_align(100, 8).unwrap());
        }
    }

    #[test]
    fn the_lists_hold_at_most_max_cached_bytes() {
        let a = SmallBlocks::new();
        let l = Layout::from_size_align(MAX_SMALL, 8).unwrap();
        let blocks: Vec<*mut u8> = (0..MAX_CACHED / MAX_SMALL + 10)
            .map(|_| unsafe { a.alloc(l) })
            .collect();
        for p in blocks {
            unsafe { a.dealloc(p, l) };
        }
        assert_eq!(unsafe { (*a.state.get()).cached }, MAX_CACHED);
    }

    #[test]
    fn over_aligned_and_large_layouts_go_to_the_system() {
        assert_eq!(
            SmallBlocks::class(Layout::from_size_align(32, 16).unwrap()),
            None
        );
        assert_eq!(
            SmallBlocks::class(Layout::from_size_align(MAX_SMALL + 1, 8).unwrap()),
            None
        );
        assert_eq!(
            SmallBlocks::class(Layout::from_size_align(0, 1).unwrap()),
            None
        );
        assert_eq!(
            SmallBlocks::class(Layout::from_size_align(1, 1).unwrap()),
            Some(0)
        );
    }
}
