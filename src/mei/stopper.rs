//! When an optimisation stops: after a fixed number of steps (openretina's `OptimizationStopper`)
//! or when the loss stops improving (its `EarlyStopper`). Both cap the steps at the settings'
//! `iterations`.

/// openretina's `EarlyStopper` parameters: stop once the loss has been more than `min_delta` above
/// its best value `patience` times since the best value was last improved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStop {
    pub patience: usize,
    pub min_delta: f64,
}

/// The running state of a stopper.
#[derive(Debug, Clone)]
pub struct Stopper {
    rule: Option<EarlyStop>,
    min_loss: f64,
    counter: usize,
}

impl Stopper {
    /// A fixed number of steps (`None`) or early stopping.
    pub fn new(rule: Option<EarlyStop>) -> Self {
        Stopper { rule, min_loss: f64::INFINITY, counter: 0 }
    }

    /// Called after each step with the loss evaluated before it: whether to stop now. A loss between
    /// the best one and the best + `min_delta` changes nothing, as in openretina.
    pub fn should_stop(&mut self, loss: f64) -> bool {
        let Some(rule) = self.rule else { return false };
        if loss < self.min_loss {
            self.min_loss = loss;
            self.counter = 0;
        } else if loss > self.min_loss + rule.min_delta {
            self.counter += 1;
            return self.counter >= rule.patience;
        }
        false
    }
}
