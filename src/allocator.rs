//! The C allocator's settings for this workload: an MEI step allocates and frees the same buffers
//! (layer outputs, padded copies, gradients) hundreds of times per second. glibc starts with small
//! thresholds that it raises only as it sees large buffers freed, and meanwhile hands free memory at
//! the top of a thread's heap back to the kernel (`madvise`), so the next step page-faults it in
//! again: 5-10% of the CPU time of `zoo_conv_separable`'s MEIs went to the kernel. Here buffers up to
//! 4 MiB come from the heap and up to 16 MiB of free heap stay with each thread. Larger buffers
//! (long stimuli, real-size models) are still mapped and returned: their peak memory stays as it was
//! (`retina mei` on `zoo_conv_full` with 8192 frames: 170 MB either way).

/// Apply the settings (glibc on Linux; elsewhere nothing). Call once, early, from a program's `main`.
pub fn tune_for_repeated_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // glibc's malloc.h: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes the allocator's parameters (a refused value leaves the
        // default).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 4 << 20);
            mallopt(M_TRIM_THRESHOLD, 16 << 20);
        }
    }
}
