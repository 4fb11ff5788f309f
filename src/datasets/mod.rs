//! Public datasets turned into leadscore's inputs, for calibration and
//! realistic examples. The data stays where it is; only converters live here.

pub mod x_education;
