//! The one matrix product the model uses, on plain slices with explicit strides.

use super::Float;

/// A matrix view: a slice with a row stride and a column stride (in elements).
#[derive(Clone, Copy)]
pub struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Layout {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Layout { rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of this view (no data moves).
    pub fn t(self) -> Self {
        Layout { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride }
    }

    fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `c = beta * c + a × b`.
pub fn gemm<F: Float>(a: &[F], la: Layout, b: &[F], lb: Layout, beta: F, c: &mut [F], lc: Layout) {
    assert!(la.cols == lb.rows && la.rows == lc.rows && lb.cols == lc.cols, "gemm: shapes do not match");
    assert!(a.len() >= la.span() && b.len() >= lb.span() && c.len() >= lc.span(), "gemm: slice too short");
    let (m, k, n) = (la.rows, la.cols, lb.cols);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every index the kernel touches inside the three slices, and `c`
    // is borrowed mutably so it cannot alias `a` or `b`.
    unsafe { F::gemm_raw(m, k, n, a.as_ptr(), la, b.as_ptr(), lb, beta, c.as_mut_ptr(), lc) }
}

/// The raw kernels, dispatched per float type.
pub trait Gemm: Sized {
    /// # Safety
    /// Pointers and layouts must describe valid, non-overlapping (for `c`) memory.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(m: usize, k: usize, n: usize, a: *const Self, la: Layout, b: *const Self, lb: Layout, beta: Self, c: *mut Self, lc: Layout);
}

macro_rules! impl_gemm {
    ($t:ty, $f:path) => {
        impl Gemm for $t {
            unsafe fn gemm_raw(m: usize, k: usize, n: usize, a: *const Self, la: Layout, b: *const Self, lb: Layout, beta: Self, c: *mut Self, lc: Layout) {
                $f(
                    m, k, n, 1.0,
                    a, la.row_stride as isize, la.col_stride as isize,
                    b, lb.row_stride as isize, lb.col_stride as isize,
                    beta, c, lc.row_stride as isize, lc.col_stride as isize,
                )
            }
        }
    };
}
impl_gemm!(f32, matrixmultiply::sgemm);
impl_gemm!(f64, matrixmultiply::dgemm);
