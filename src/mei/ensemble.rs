//! The mean of one objective over several models, e.g. the members of an ensemble: Hoefling et al.
//! 2024 optimised their MEIs for the ensemble's mean response. The gradient of a mean is the mean of
//! the members' gradients, each computed with that member's own fast path.

use super::objective::Objective;
use crate::model::Float;

/// One objective per model, averaged.
pub struct MeanObjective<'m, F> {
    members: Vec<Objective<'m, F>>,
}

impl<'m, F: Float> MeanObjective<'m, F> {
    /// `members` must be the same objective (target, window, stimulus shape) on different models.
    pub fn new(members: Vec<Objective<'m, F>>) -> Self {
        assert!(!members.is_empty(), "a mean needs at least one member");
        MeanObjective { members }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The first member's objective (what every member shares: window, frames, work).
    pub fn first(&self) -> &Objective<'m, F> {
        &self.members[0]
    }

    /// The mean objective and its gradient. With one member, exactly that member's.
    pub fn gradient(&self, x: &[F]) -> (f64, Vec<F>) {
        if self.members.len() == 1 {
            return self.members[0].gradient(x);
        }
        let mut value = 0.0;
        let mut sum = vec![0.0f64; x.len()];
        for member in &self.members {
            let (v, g) = member.gradient(x);
            value += v;
            sum.iter_mut().zip(&g).for_each(|(s, g)| *s += g.to_f64());
        }
        let n = self.members.len() as f64;
        (value / n, sum.iter().map(|s| F::from_f64(s / n)).collect())
    }

    /// The mean objective and its mean time series.
    pub fn evaluate(&self, x: &[F]) -> (f64, Vec<F>) {
        if self.members.len() == 1 {
            return self.members[0].evaluate(x);
        }
        let (values, traces): (Vec<f64>, Vec<Vec<Vec<F>>>) = self.members.iter().map(|m| {
            let (v, series) = m.evaluate(x);
            (v, vec![series])
        }).unzip();
        (values.iter().sum::<f64>() / values.len() as f64, mean_traces(&traces).remove(0))
    }

    /// The mean of the members' group traces (see [`Objective::group_traces`]).
    pub fn group_traces(&self, x: &[F]) -> Vec<Vec<F>> {
        let traces: Vec<Vec<Vec<F>>> = self.members.iter().map(|m| m.group_traces(x)).collect();
        mean_traces(&traces)
    }
}

/// Element-wise mean over members of lists of traces, accumulated in f64.
fn mean_traces<F: Float>(members: &[Vec<Vec<F>>]) -> Vec<Vec<F>> {
    let n = members.len() as f64;
    (0..members[0].len())
        .map(|k| {
            (0..members[0][k].len())
                .map(|t| F::from_f64(members.iter().map(|m| m[k][t].to_f64()).sum::<f64>() / n))
                .collect()
        })
        .collect()
}
