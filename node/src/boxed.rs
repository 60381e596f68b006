//! Values built straight into their box. `Box::new(value)` builds the value first and
//! copies it into the allocation afterwards, a `memcpy` call for anything larger than
//! 128 bytes; with the allocation made first, the value can be written in place.

use std::mem::MaybeUninit;

/// `Box::new(make())`, with `make`'s value written into the allocation rather than
/// copied there.
#[inline(always)]
pub fn boxed<T>(make: impl FnOnce() -> T) -> Box<T> {
    let mut slot: Box<MaybeUninit<T>> = Box::new_uninit();
    slot.write(make());
    // SAFETY: the value was written on the line above. Had `make` panicked, the
    // uninitialised box would have been freed without being read.
    unsafe { slot.assume_init() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_box_holds_what_was_made_and_a_panic_leaves_nothing_behind() {
        let b = boxed(|| (vec![1u8, 2, 3], [7u64; 40]));
        assert_eq!(b.0, [1, 2, 3]);
        assert_eq!(b.1[39], 7);
        let failed = std::panic::catch_unwind(|| boxed::<Vec<u8>>(|| panic!("not made")));
        assert!(failed.is_err());
    }
}
