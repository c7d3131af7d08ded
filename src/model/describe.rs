//! burn modules written into the network description ([`crate::ir`]) in inference form: batch
//! norm folded into the convolution before it, dropout gone.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};

use crate::core::error::NetworkError;
use crate::ir::{LayerOp, NetworkBuilder};

fn values(t: burn::tensor::Tensor<1>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap_or_default()
}

/// A convolution, with the batch norm that follows it folded in:
/// `w' = w * g / sqrt(v + eps)`, `b' = beta + (b - mean) * g / sqrt(v + eps)`.
pub fn conv(
    g: &mut NetworkBuilder,
    x: &str,
    conv: &Conv2d,
    bn: Option<&BatchNorm>,
) -> Result<String, NetworkError> {
    let dims = conv.weight.val().dims();
    let mut w: Vec<f32> = conv
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let out_channels = dims[0];
    let mut b: Vec<f32> = match &conv.bias {
        Some(bias) => values(bias.val()),
        None => vec![0.0; out_channels],
    };
    if let Some(bn) = bn {
        let gamma = values(bn.gamma.val());
        let beta = values(bn.beta.val());
        let mean = values(bn.running_mean.value());
        let var = values(bn.running_var.value());
        let per_out = w.len() / out_channels;
        for o in 0..out_channels {
            let scale = gamma[o] / (var[o] + bn.epsilon as f32).sqrt();
            w[o * per_out..(o + 1) * per_out]
                .iter_mut()
                .for_each(|v| *v *= scale);
            b[o] = beta[o] + (b[o] - mean[o]) * scale;
        }
    }
    let pads = match conv.padding {
        PaddingConfig2d::Valid => [0, 0, 0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
        PaddingConfig2d::Same => return Err(NetworkError::SamePadding),
    };
    if conv.dilation != [1, 1] {
        return Err(NetworkError::Dilation);
    }
    Ok(g.layer(LayerOp::Conv {
        input: x.to_string(),
        weight: w,
        bias: b,
        dims: [dims[0], dims[1], dims[2], dims[3]],
        stride: conv.stride,
        pads,
        groups: conv.groups,
    }))
}

/// `x @ W + b` (burn keeps linear weights as `[in, out]`).
pub fn linear(g: &mut NetworkBuilder, x: &str, linear: &Linear) -> String {
    let dims = linear.weight.val().dims();
    let weight: Vec<f32> = linear
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let bias = match &linear.bias {
        Some(bias) => values(bias.val()),
        None => vec![0.0; dims[1]],
    };
    g.layer(LayerOp::Linear {
        input: x.to_string(),
        weight,
        bias,
        dims: [dims[0], dims[1]],
    })
}
