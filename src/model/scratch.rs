//! Reused per-thread buffers for the temporaries of the float32 kernels (padded inputs, transposed
//! gradients, channels-last results). A fresh `vec![0.0; n]` per call cost more than some kernels'
//! arithmetic on small frames: page faults on memory the allocator had just returned to the system,
//! then zeroing it (12% of `zoo_conv_separable`'s MEI time with the AVX-512 kernels).

use std::any::Any;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread, and the largest kept (in floats: 16 MiB); larger ones are freed.
const KEPT: usize = 8;
const LARGEST: usize = 1 << 22;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` default values (zeros): for float32 from this thread's pool and given back
/// when dropped, for other types a plain allocation (their kernels are the portable ones).
pub struct Scratch<F: 'static>(Vec<F>);

impl<F: Copy + Default + 'static> Scratch<F> {
    pub fn zeroed(len: usize) -> Self {
        let mut buffer: Vec<F> = Vec::new();
        if let Some(floats) = (&mut buffer as &mut dyn Any).downcast_mut::<Vec<f32>>() {
            *floats = POOL.with(|pool| pool.borrow_mut().pop()).unwrap_or_default();
            floats.clear();
        }
        buffer.resize(len, F::default());
        Scratch(buffer)
    }
}

impl<F: 'static> Drop for Scratch<F> {
    fn drop(&mut self) {
        if let Some(floats) = (&mut self.0 as &mut dyn Any).downcast_mut::<Vec<f32>>() {
            let buffer = std::mem::take(floats);
            if buffer.capacity() <= LARGEST {
                POOL.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    if pool.len() < KEPT {
                        pool.push(buffer);
                    }
                });
            }
        }
    }
}

impl<F> Deref for Scratch<F> {
    type Target = [F];
    fn deref(&self) -> &[F] {
        &self.0
    }
}

impl<F> DerefMut for Scratch<F> {
    fn deref_mut(&mut self) -> &mut [F] {
        &mut self.0
    }
}
