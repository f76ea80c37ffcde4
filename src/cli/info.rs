//! `retina info`: what a model file holds.

use super::*;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub(super) fn info(args: &InfoArgs) -> Result<()> {
    let model = args.model.load()?;
    print!("{}", describe(&model));
    if let Some(line) = formats::download::digest_line(&args.model.model_path, &args.model.source.download_options(true))? {
        println!("{line}");
    }
    Ok(())
}

/// A human-readable summary of a model.
pub fn describe(model: &Model<f32>) -> String {
    let c = &model.config;
    let mut s = String::new();
    s += &format!("model class:    {}\n", c.model_class);
    s += &format!(
        "stimulus:       {} channel(s) x time x {} x {} (height x width); shape for 50 frames: {:?}\n",
        c.input_channels,
        c.height,
        c.width,
        c.stimulus_shape(50, 1)
    );
    if let Some(t) = c.train_time_steps {
        s += &format!("trained on:     {t} frames\n");
    }
    s += &format!("core:           {}\n", c.core_class);
    s += &crate::model::describe_core(model);
    if c.cut_first_n_frames > 0 {
        s += &format!("  first {} output frames cut\n", c.cut_first_n_frames);
    }
    let total: usize = c.sessions.iter().map(|(_, n)| n).sum();
    s += &format!("readout:        {}\n", c.readout.class);
    s += &format!("sessions:       {} ({} neurons in all)\n", c.sessions.len(), total);
    for (name, n) in &c.sessions {
        s += &format!("  {name}: {n} neurons\n");
    }
    s
}
