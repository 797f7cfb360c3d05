"""The map of what is checked: every public function and method of snf_tf, by the kind of check its
numbers get. A registry, not a test module (pytest collects no tests here).

- ``CHECKED``: a public function or method that returns numbers → the tests that compare them with
  an independent reference: a float64 autodiff Jacobian and its slogdet, a numerical Jacobian,
  NumPy, SciPy or TFP computations, a closed form, the model's numbers against its SavedModel in
  a fresh interpreter, or a view or wrapper against the snf_tf function it claims to equal when
  that one is checked against such a reference itself. A test that only compares a function with
  another call of the same code (eager against traced, saved against loaded, one seed twice), or
  checks shapes, finiteness or determinism alone, does not count.
- ``NOT_NUMERIC``: a public function or method that returns no number to check (configuration,
  serialisation, builders, validators, file I/O, shape bookkeeping, Keras hooks whose numbers
  another entry carries) → why, in one phrase.
- ``UNCHECKED``: a public function or method that returns numbers no test checks against an
  independent reference → what is missing.

Names are ``module.function`` or ``module.Class.method`` with the module that defines the object;
an inherited method appears once, under the class that defines it (private bases included), and
an override appears under its own class. Tests are ``tests/FILE.py::FUNCTION`` (parametrized
tests by their function). ``tests/test_reference_map.py`` fails when a public name is missing here
or listed twice, when an entry or a test no longer exists, or when ``docs/checks_map.md`` (written
by ``python scripts/checks_map.py``) differs from what this registry gives.
"""

_LAYER_NUMBERS = "tests/test_layer_table.py::test_public_numbers_equal_independent_references"
_EXPORT_FRESH = "tests/test_export.py::test_fresh_process_without_snf_tf"
_EXPORT_ENDPOINTS = "tests/test_export.py::test_endpoints_match_the_model"
_LABELS_FRESH = (
    "tests/test_conditional.py::test_saved_model_takes_labels_in_a_process_without_snf_tf")

CHECKED = {
    # -- snf_tf.ops ---------------------------------------------------------------------------
    "snf_tf.ops.linalg.log_abs_det_qr": [
        "tests/test_linalg.py::test_qr_log_det_equals_slogdet",
        "tests/test_glow.py::test_conv1x1_compiles_with_xla_and_its_log_det_gradient_is_w_inverse_transpose",
    ],
    "snf_tf.ops.selfnorm.conv_log_det_surrogate": [
        "tests/test_ops_selfnorm.py::test_dense_and_conv_surrogates_are_zero_with_the_paper_gradients",
        "tests/test_selfnorm.py::test_conv_snf_gradients_equal_dense_toeplitz_formulas",
    ],
    "snf_tf.ops.selfnorm.dense_log_det_surrogate": [
        "tests/test_ops_selfnorm.py::test_dense_and_conv_surrogates_are_zero_with_the_paper_gradients",
        "tests/test_selfnorm.py::test_dense_snf_gradient_is_half_the_exact_gradient_when_r_is_the_inverse",
        "tests/test_selfnorm.py::test_dense_gradients_equal_the_paper_formulas_in_numpy",
    ],
    "snf_tf.ops.selfnorm.flip_kernel": [
        "tests/test_ops_selfnorm.py::test_flip_kernel_is_the_transposed_conv",
    ],
    "snf_tf.ops.selfnorm.relative_dense": [
        "tests/test_ops_selfnorm.py::test_relative_dense_gradient_is_the_relative_gradient",
        "tests/test_selfnorm.py::test_relative_gradient_is_euclidean_gradient_times_wtw",
    ],
    "snf_tf.ops.selfnorm.relative_log_det_surrogate": [
        "tests/test_ops_selfnorm.py::test_relative_surrogate_is_zero_with_the_kernel_as_gradient",
        "tests/test_selfnorm.py::test_relative_gradient_is_euclidean_gradient_times_wtw",
    ],
    "snf_tf.ops.selfnorm.selfnorm_conv2d": [
        "tests/test_ops_selfnorm.py::test_fused_op_values_and_gradients_equal_the_documented_formulas",
        "tests/test_selfnorm.py::test_conv_snf_gradients_equal_dense_toeplitz_formulas",
        "tests/test_selfnorm.py::test_conv_reconstruction_ignores_non_finite_examples",
    ],
    "snf_tf.ops.selfnorm.selfnorm_dense": [
        "tests/test_ops_selfnorm.py::test_fused_op_values_and_gradients_equal_the_documented_formulas",
        "tests/test_selfnorm.py::test_dense_snf_gradient_is_half_the_exact_gradient_when_r_is_the_inverse",
        "tests/test_selfnorm.py::test_dense_gradients_equal_the_paper_formulas_in_numpy",
    ],
    "snf_tf.ops.selfnorm.tap_counts": [
        "tests/test_ops_selfnorm.py::test_tap_counts_equal_weight_gradient_of_ones",
        "tests/test_ops_selfnorm.py::test_tap_counts_paper_values",
    ],
    "snf_tf.ops.selfnorm.value_zero": [
        "tests/test_ops_selfnorm.py::test_value_zero_has_zero_value_and_the_gradient_of_its_argument",
    ],
    "snf_tf.ops.toeplitz.conv_log_abs_det": [
        "tests/test_toeplitz.py::test_log_det_equals_slogdet_of_autodiff_jacobian",
        "tests/test_toeplitz.py::test_log_det_is_differentiable_like_numpy",
    ],
    "snf_tf.ops.toeplitz.conv_solve": [
        "tests/test_toeplitz.py::test_solve_inverts_the_conv",
    ],
    "snf_tf.ops.toeplitz.conv_toeplitz": [
        "tests/test_toeplitz.py::test_matrix_is_the_conv",
    ],
    "snf_tf.ops.toeplitz.toeplitz_indices": [
        "tests/test_toeplitz.py::test_matrix_is_the_conv",
    ],
    # -- snf_tf.layers ------------------------------------------------------------------------
    "snf_tf.layers.base.FlowLayer.forward": [
        "tests/test_layer_table.py::test_log_det_equals_slogdet_of_autodiff_jacobian",
        "tests/test_properties.py::test_dense_layers_keep_the_contract",
        "tests/test_properties.py::test_image_layers_keep_the_contract",
        "tests/test_selfnorm.py::test_conv_exact_log_det_equals_slogdet_over_toeplitz_shapes",
        "tests/test_glow.py::test_actnorm_first_training_batch_gives_zero_mean_unit_variance",
        "tests/test_glow.py::test_conv1x1_log_det_is_hw_times_slogdet_and_init_is_orthogonal",
        "tests/test_glow.py::test_coupling_interleave_matches_numpy_reference",
        "tests/test_emerging.py::test_forward_equals_the_reference_definition",
        "tests/test_convexp.py::test_eval_forward_equals_the_matrix_exponential",
        "tests/test_convexp.py::test_series_length_follows_training_flag_and_constructor",
        "tests/test_preprocess.py::test_normalize_by_256_and_its_log_det",
        "tests/test_preprocess.py::test_logit_matches_the_reference_formula",
        "tests/test_reshape.py::test_squeeze_equals_the_reference_definition",
        "tests/test_activations.py::test_smooth_leaky_relu_matches_the_reference_formula",
        "tests/test_activations.py::test_learnable_leaky_relu_parametrisation",
        "tests/test_activations.py::test_spline_matches_a_numpy_port_of_the_reference",
        "tests/test_spline.py::test_layer_equals_its_tfp_bijector",
    ],
    "snf_tf.layers.base.FlowLayer.forward_with_reconstruction": [
        "tests/test_selfnorm.py::test_fused_reconstruction_equals_standalone_reconstruction_loss",
        "tests/test_selfnorm.py::test_conv_reconstruction_ignores_non_finite_examples",
    ],
    "snf_tf.layers.base.FlowLayer.inverse": [
        "tests/test_layer_table.py::test_round_trip",
        "tests/test_layer_table.py::test_learned_inverse_applies_r",
        "tests/test_properties.py::test_dense_layers_keep_the_contract",
        "tests/test_properties.py::test_image_layers_keep_the_contract",
        "tests/test_emerging.py::test_inverse_equals_a_dense_solve_with_the_jacobian",
        "tests/test_spline.py::test_layer_equals_its_tfp_bijector",
    ],
    "snf_tf.layers.base.FlowLayer.reconstruction_loss": [_LAYER_NUMBERS],
    "snf_tf.layers.activations.LearnableLeakyReLU.alpha": [
        "tests/test_activations.py::test_learnable_leaky_relu_parametrisation",
        "tests/test_activations.py::test_learnable_leaky_relu_initial_alpha",
    ],
    "snf_tf.layers.activations.SplineActivation.as_tfp_bijector": [
        "tests/test_spline.py::test_layer_equals_its_tfp_bijector",
    ],
    "snf_tf.layers.activations.SplineActivation.spline_parameters": [
        "tests/test_spline.py::test_layer_equals_its_tfp_bijector",
    ],
    "snf_tf.layers.convexp.ConvExponential.effective_kernel": [
        "tests/test_convexp.py::test_power_iteration_runs_only_in_training_and_finds_the_largest_singular_value",
        "tests/test_convexp.py::test_small_kernels_are_left_alone_up_to_the_stability_constant",
    ],
    "snf_tf.layers.convexp.ConvExponential.exact_log_abs_det": [
        _LAYER_NUMBERS,
        "tests/test_convexp.py::test_log_det_equals_its_closed_form_and_slogdet_over_shapes",
    ],
    "snf_tf.layers.convexp.ConvExponential.series_inverse": [
        "tests/test_convexp.py::test_series_inverse_converges_with_the_number_of_terms",
        "tests/test_convexp.py::test_float32_round_trip_at_initialisation_and_in_training_mode",
    ],
    "snf_tf.layers.convexp.ConvExponential.spectral_norm": [
        "tests/test_convexp.py::test_power_iteration_runs_only_in_training_and_finds_the_largest_singular_value",
        "tests/test_convexp.py::test_small_kernels_are_left_alone_up_to_the_stability_constant",
    ],
    "snf_tf.layers.emerging.EmergingConv2D.exact_log_abs_det": [
        _LAYER_NUMBERS,
        "tests/test_emerging.py::test_log_det_equals_its_closed_form_and_slogdet_over_shapes",
    ],
    "snf_tf.layers.glow.ActNorm.exact_log_abs_det": [_LAYER_NUMBERS],
    "snf_tf.layers.glow.ActNorm.initialize": [
        "tests/test_glow.py::test_actnorm_first_training_batch_gives_zero_mean_unit_variance",
        "tests/test_glow.py::test_actnorm_initialize_forces_a_new_init",
    ],
    "snf_tf.layers.glow.AffineCoupling.scale_and_shift": [
        "tests/test_glow.py::test_coupling_interleave_matches_numpy_reference",
    ],
    "snf_tf.layers.glow.Conv1x1.exact_log_abs_det": [_LAYER_NUMBERS],
    "snf_tf.layers.glow.Conv1x1.log_abs_det_per_pixel": [
        _LAYER_NUMBERS,
        "tests/test_glow.py::test_conv1x1_compiles_with_xla_and_its_log_det_gradient_is_w_inverse_transpose",
    ],
    "snf_tf.layers.glow.SplitPrior.merge": ["tests/test_layer_table.py::test_round_trip"],
    "snf_tf.layers.glow.SplitPrior.split": [
        "tests/test_glow.py::test_split_prior_log_det_is_coupling_jacobian_plus_standard_normal_density",
    ],
    "snf_tf.layers.preprocess.Dequantize.exact_log_abs_det": [_LAYER_NUMBERS],
    "snf_tf.layers.preprocess.Normalize.exact_log_abs_det": [_LAYER_NUMBERS],
    "snf_tf.layers.preprocess.Normalize.logit_prescaling": [
        "tests/test_preprocess.py::test_normalize_uses_the_reference_nonstandard_prescaling",
    ],
    "snf_tf.layers.preprocess.Normalize.unit_range": [
        "tests/test_data_contract.py::test_image_models_declare_the_pixel_range_and_other_flows_none",
    ],
    "snf_tf.layers.reshape._Rearrangement.exact_log_abs_det": [_LAYER_NUMBERS],
    "snf_tf.layers.selfnorm.SelfNormConv2D.inverse_error": [
        _LAYER_NUMBERS,
        "tests/test_selfnorm.py::test_inverse_error_is_frobenius_norm_of_rw_minus_identity",
    ],
    "snf_tf.layers.selfnorm.SelfNormDense.inverse_error": [_LAYER_NUMBERS],
    "snf_tf.layers.selfnorm._SelfNormLayer.exact_log_abs_det": [
        "tests/test_selfnorm.py::test_exact_gradient_layer_log_det_is_live_with_the_inverse_transpose_gradient",
        "tests/test_selfnorm.py::test_exact_log_abs_det_takes_its_own_event_shape_and_refuses_another",
        _LAYER_NUMBERS,
        "tests/test_selfnorm.py::test_conv_toeplitz_log_det_equals_one_by_one_shortcut",
        "tests/test_selfnorm.py::test_cache_is_refreshed_eagerly_and_never_stale_in_graphs",
    ],
    "snf_tf.layers.selfnorm._SelfNormLayer.reconstruction_loss": [
        _LAYER_NUMBERS,
        "tests/test_selfnorm.py::test_dense_reconstruction_variants_value_and_gradients_match_numpy",
        "tests/test_selfnorm.py::test_conv_reconstruction_variants_value_and_gradients_match_numpy_toeplitz",
        "tests/test_selfnorm.py::test_conv_reconstruction_ignores_non_finite_examples",
    ],
    "snf_tf.layers.selfnorm._SelfNormLayer.refresh_log_det": [
        "tests/test_selfnorm.py::test_refresh_inside_a_graph_stores_the_slogdet_of_the_matrix",
        "tests/test_selfnorm.py::test_cache_is_refreshed_eagerly_and_never_stale_in_graphs",
        "tests/test_selfnorm.py::test_many_layers_refresh_their_log_dets_without_a_retracing_warning",
    ],
    # -- snf_tf.model and snf_tf.context --------------------------------------------------------
    "snf_tf.model.FlowModel.as_bijector": [
        "tests/test_bijectors.py::test_sample_goes_through_learned_inverse",
        "tests/test_bijectors.py::test_split_prior_in_model_views",
    ],
    "snf_tf.model.FlowModel.as_distribution": [
        "tests/test_bijectors.py::test_exact_gradients_equal_autodiff_of_exact_likelihood",
        "tests/test_bijectors.py::test_distribution_log_prob_equals_model",
        "tests/test_conditional.py::test_tfp_distribution_of_a_conditional_model",
        "tests/test_sampling_references.py::test_tfp_view_of_a_conditional_model_pairs_rows_and_contexts_on_k_by_rows_batches",
    ],
    "snf_tf.model.FlowModel.base_log_prob": [
        "tests/test_model.py::test_fit_then_exact_evaluation_matches_numpy",
        "tests/test_conditional.py::test_conditional_log_prob_equals_an_independent_computation",
    ],
    "snf_tf.model.FlowModel.bits_per_dim": [
        "tests/test_model.py::test_fit_then_exact_evaluation_matches_numpy",
    ],
    "snf_tf.model.FlowModel.class_log_probs": [
        "tests/test_conditional.py::test_class_log_probs_and_generative_classification",
    ],
    "snf_tf.model.FlowModel.data_range": [
        "tests/test_data_contract.py::test_image_models_declare_the_pixel_range_and_other_flows_none",
    ],
    "snf_tf.model.FlowModel.encode_context": [
        "tests/test_conditional.py::test_a_traced_call_with_an_unknown_batch_pairs_and_checks_context_rows",
        "tests/test_conditional.py::test_conditional_log_prob_equals_an_independent_computation",
    ],
    "snf_tf.model.FlowModel.evaluate": [
        "tests/test_model.py::test_fit_then_exact_evaluation_matches_numpy",
    ],
    "snf_tf.model.FlowModel.forward": [
        "tests/test_model.py::test_sample_reconstruct_and_diagnostics",
        "tests/test_sampling_references.py::test_seeded_sample_is_the_inverse_of_t_times_the_documented_noise",
        "tests/test_sampling_references.py::test_unseeded_sample_has_latents_of_standard_deviation_t",
    ],
    "snf_tf.model.FlowModel.inverse": [
        "tests/test_model.py::test_sample_reconstruct_and_diagnostics",
        "tests/test_model.py::test_reconstruct_is_exact_where_every_r_is_the_inverse",
        "tests/test_conditional.py::test_sample_per_label_and_inverse_round_trip",
    ],
    "snf_tf.model.FlowModel.inverse_errors": [
        "tests/test_model.py::test_sample_reconstruct_and_diagnostics",
        "tests/test_model.py::test_reconstruct_is_exact_where_every_r_is_the_inverse",
    ],
    "snf_tf.model.FlowModel.log_prob": [
        "tests/test_model.py::test_fit_then_exact_evaluation_matches_numpy",
        "tests/test_conditional.py::test_conditional_log_prob_equals_an_independent_computation",
        "tests/test_conditional.py::test_fc_and_conv_flows_are_conditional_through_their_base",
    ],
    "snf_tf.model.FlowModel.marginal_log_prob": [
        "tests/test_conditional.py::test_class_log_probs_and_generative_classification",
    ],
    "snf_tf.model.FlowModel.reconstruct": [
        "tests/test_model.py::test_sample_reconstruct_and_diagnostics",
        "tests/test_model.py::test_reconstruct_is_exact_where_every_r_is_the_inverse",
    ],
    "snf_tf.model.FlowModel.sample": [
        "tests/test_sampling_references.py::test_seeded_sample_of_a_split_prior_model_walks_back_with_seed_plus_one",
        "tests/test_model.py::test_sample_reconstruct_and_diagnostics",
        "tests/test_sampling_references.py::test_seeded_sample_is_the_inverse_of_t_times_the_documented_noise",
        "tests/test_sampling_references.py::test_unseeded_sample_has_latents_of_standard_deviation_t",
        "tests/test_sampling_references.py::test_conditional_sample_is_mu_plus_t_sigma_times_the_documented_noise",
        "tests/test_sampling_references.py::test_unseeded_conditional_sample_has_latents_mu_and_t_sigma",
    ],
    "snf_tf.model.FlowModel.test_step": [
        "tests/test_model.py::test_fit_then_exact_evaluation_matches_numpy",
    ],
    "snf_tf.context.ConditionalNormal.from_standard": [
        "tests/test_sampling_references.py::test_conditional_sample_is_mu_plus_t_sigma_times_the_documented_noise",
        "tests/test_sampling_references.py::test_unseeded_conditional_sample_has_latents_mu_and_t_sigma",
    ],
    "snf_tf.context.ConditionalNormal.log_prob": [
        "tests/test_conditional.py::test_conditional_log_prob_equals_an_independent_computation",
        "tests/test_conditional.py::test_fc_and_conv_flows_are_conditional_through_their_base",
    ],
    "snf_tf.context.ConditionalNormal.parameters": [
        "tests/test_sampling_references.py::test_tfp_view_of_a_conditional_model_pairs_rows_and_contexts_on_k_by_rows_batches",
        "tests/test_sampling_references.py::test_conditional_sample_is_mu_plus_t_sigma_times_the_documented_noise",
    ],
    "snf_tf.context.broadcast": [
        "tests/test_context.py::test_broadcast_repeats_one_label_or_one_row",
    ],
    "snf_tf.context.encode": [
        "tests/test_context.py::test_labels_are_one_hot_and_vectors_pass_through",
    ],
    "snf_tf.context.repeat_rows": [
        "tests/test_context.py::test_repeat_rows_tiles_for_k_samples_per_row",
    ],
    # -- snf_tf.bijectors ---------------------------------------------------------------------
    "snf_tf.bijectors.FlowDistribution.experimental_local_measure": [
        "tests/test_bijectors.py::test_exact_gradients_equal_autodiff_of_exact_likelihood",
        "tests/test_bijectors.py::test_chain_with_shift_scale_sigmoid",
        "tests/test_bijectors.py::test_real_nvp_plain_function_with_views",
        "tests/test_bijectors.py::test_distribution_log_prob_equals_model",
    ],
    "snf_tf.bijectors.model_bijector": [
        "tests/test_bijectors.py::test_sample_goes_through_learned_inverse",
        "tests/test_bijectors.py::test_split_prior_in_model_views",
    ],
    "snf_tf.bijectors.model_distribution": [
        "tests/test_bijectors.py::test_exact_gradients_equal_autodiff_of_exact_likelihood",
        "tests/test_bijectors.py::test_distribution_log_prob_equals_model",
        "tests/test_sampling_references.py::test_tfp_view_of_a_conditional_model_pairs_rows_and_contexts_on_k_by_rows_batches",
    ],
    # -- snf_tf.export ------------------------------------------------------------------------
    "snf_tf.export.dequantized_log_prob": [_EXPORT_ENDPOINTS, _EXPORT_FRESH, _LABELS_FRESH],
    "snf_tf.export.export_saved_model": [
        _EXPORT_FRESH,
        _EXPORT_ENDPOINTS,
        "tests/test_export.py::test_exported_stacks_give_their_exact_log_likelihood",
        _LABELS_FRESH,
    ],
    "snf_tf.export.forward": [_EXPORT_ENDPOINTS, _EXPORT_FRESH],
    "snf_tf.export.inverse": [_EXPORT_FRESH, _LABELS_FRESH],
    "snf_tf.export.log_prob": [_EXPORT_ENDPOINTS, _EXPORT_FRESH, _LABELS_FRESH],
    "snf_tf.export.sample": [
        _EXPORT_FRESH,
        "tests/test_sampling_references.py::test_saved_model_sample_is_the_inverse_of_the_documented_noise",
    ],
    "snf_tf.callbacks.ImageGrid.on_epoch_end": [
        "tests/test_sampling_references.py::test_image_grid_callback_draws_the_inverse_of_t_times_the_documented_noise",
    ],
    # -- snf_tf.callbacks, snf_tf.data, snf_tf.images -----------------------------------------
    "snf_tf.callbacks.Geco.on_train_batch_end": [
        "tests/test_callbacks.py::test_geco_grows_lambda_by_the_ema_of_reconstruction_errors",
        "tests/test_callbacks.py::test_geco_over_several_layers_matches_the_per_layer_update_to_the_bit",
    ],
    "snf_tf.callbacks.LinearWarmup.__call__": [
        "tests/test_callbacks.py::test_linear_warmup_matches_reference_formula",
        "tests/test_callbacks.py::test_linear_warmup_scale_multiplies_and_round_trips",
    ],
    "snf_tf.data.load": [
        "tests/test_data.py::test_mnist_paper_splits_are_uint8_and_deterministic",
        "tests/test_data.py::test_mnist_augmentation_is_a_one_pixel_shift",
    ],
    "snf_tf.images.image_grid": ["tests/test_callbacks.py::test_image_grid_layout"],
    "snf_tf.layers.realnvp.RealNVPCoupling.bijector": [
        "tests/test_public_numbers.py::test_realnvp_bijector_is_the_affine_coupling_of_the_layer_weights",
    ],
    "snf_tf.layers.selfnorm.SelfNormConv2D.toeplitz_matrix": [
        "tests/test_public_numbers.py::test_toeplitz_matrix_is_the_matrix_of_the_convolution",
    ],
    "snf_tf.model.FlowModel.forward_with_reconstruction": [
        "tests/test_public_numbers.py::test_forward_with_reconstruction_sums_the_layers_numbers",
    ],
    "snf_tf.model.FlowModel.train_step": [
        "tests/test_public_numbers.py::test_the_logged_loss_nll_and_recon_of_a_training_step",
        "tests/test_public_numbers.py::"
        "test_a_training_step_applies_half_the_exact_kernel_gradient_where_r_is_w_inverse",
    ],
    "snf_tf.callbacks.Geco.ema": [
        "tests/test_public_numbers.py::test_geco_average_and_lambda_follow_the_recurrence",
    ],
    "snf_tf.data.num_examples": [
        "tests/test_public_numbers.py::test_num_examples_is_what_load_yields",
    ],
}

_CONFIG = "Keras configuration"
_SHAPE = "shape bookkeeping"
_FLAG = "a capability flag"
_DTYPE = "a dtype"
_VALIDATOR = "validates its arguments (raises or passes them on)"
_BUILDER = "builder: returns a FlowModel"

NOT_NUMERIC = {
    "snf_tf.register_serializables": "imports modules for Keras registration",
    # -- snf_tf.layers ------------------------------------------------------------------------
    "snf_tf.layers.base.FlowLayer.build": "creates the weights",
    "snf_tf.layers.base.FlowLayer.call": "Keras hook: forward's numbers (FlowLayer.forward)",
    "snf_tf.layers.base.FlowLayer.channels": _SHAPE,
    "snf_tf.layers.base.FlowLayer.compute_dtype": _DTYPE,
    "snf_tf.layers.base.FlowLayer.compute_output_shape": _SHAPE,
    "snf_tf.layers.base.FlowLayer.compute_output_spec": _SHAPE,
    "snf_tf.layers.base.FlowLayer.exact_log_abs_det":
        "raises TypeError: the log-det depends on x (overrides compute it)",
    "snf_tf.layers.base.FlowLayer.load_own_variables": "serialisation",
    "snf_tf.layers.base.FlowLayer.network_dtype": _DTYPE,
    "snf_tf.layers.base.FlowLayer.save_own_variables": "serialisation",
    "snf_tf.layers.base.FlowLayer.supports_jit": _FLAG,
    "snf_tf.layers.activations.LearnableLeakyReLU.get_config": _CONFIG,
    "snf_tf.layers.activations.SmoothLeakyReLU.get_config": _CONFIG,
    "snf_tf.layers.activations.SplineActivation.get_config": _CONFIG,
    "snf_tf.layers.convexp.ConvExponential.get_config": _CONFIG,
    "snf_tf.layers.glow.AffineCoupling.get_config": _CONFIG,
    "snf_tf.layers.glow.SplitPrior.compute_output_shape": _SHAPE,
    "snf_tf.layers.glow.SplitPrior.get_config": _CONFIG,
    "snf_tf.layers.preprocess.Dequantize.get_config": _CONFIG,
    "snf_tf.layers.preprocess.Normalize.get_config": _CONFIG,
    "snf_tf.layers.realnvp.RealNVPCoupling.get_config": _CONFIG,
    "snf_tf.layers.reshape.Flatten.get_config": _CONFIG,
    "snf_tf.layers.reshape.Reshape.compute_output_shape": _SHAPE,
    "snf_tf.layers.reshape.Reshape.get_config": _CONFIG,
    "snf_tf.layers.reshape.Squeeze.compute_output_shape": _SHAPE,
    "snf_tf.layers.selfnorm.SelfNormConv2D.get_config": _CONFIG,
    "snf_tf.layers.selfnorm.SelfNormConv2D.toeplitz_size": _SHAPE,
    "snf_tf.layers.selfnorm.SelfNormDense.get_config": _CONFIG,
    "snf_tf.layers.selfnorm._SelfNormLayer.get_config": _CONFIG,
    "snf_tf.layers.selfnorm._SelfNormLayer.learns_inverse": _FLAG,
    "snf_tf.layers.selfnorm._SelfNormLayer.supports_xla": _FLAG,
    "snf_tf.layers.selfnorm._SelfNormLayer.uses_reconstruction": _FLAG,
    # -- snf_tf.model and snf_tf.context --------------------------------------------------------
    "snf_tf.model.FlowModel.build": "creates the layers' weights and the base",
    "snf_tf.model.FlowModel.call": "Keras hook: log_prob's numbers (FlowModel.log_prob)",
    "snf_tf.model.FlowModel.compute_dtype": _DTYPE,
    "snf_tf.model.FlowModel.conditional": _FLAG,
    "snf_tf.model.FlowModel.data_dimension": _SHAPE,
    "snf_tf.model.FlowModel.fit": "data checks, then Keras fit: its numbers are train_step's",
    "snf_tf.model.FlowModel.from_config": _CONFIG,
    "snf_tf.model.FlowModel.frozen_log_dets":
        "context manager; its effect is checked through export_saved_model",
    "snf_tf.model.FlowModel.get_config": _CONFIG,
    "snf_tf.model.FlowModel.metrics": "the metric trackers",
    "snf_tf.model.FlowModel.refresh_log_dets":
        "returns nothing; calls each layer's refresh_log_det (checked)",
    "snf_tf.context.ConditionalNormal.call": "Keras hook: parameters' numbers",
    "snf_tf.context.ConditionalNormal.get_config": _CONFIG,
    "snf_tf.context.check_data_contexts": _VALIDATOR,
    "snf_tf.context.check_layer_context": _VALIDATOR,
    "snf_tf.context.check_widths": _VALIDATOR,
    "snf_tf.context.split_batch": "unpacks a batch tuple",
    # -- snf_tf.bijectors ---------------------------------------------------------------------
    "snf_tf.bijectors.FlowBijector.exact": _FLAG,
    "snf_tf.bijectors.FlowBijector.exact_inverse": _FLAG,
    "snf_tf.bijectors.FlowBijector.layer": "the layer the view reads",
    # -- snf_tf.export ------------------------------------------------------------------------
    "snf_tf.export.frozen_log_dets": "deprecated alias of FlowModel.frozen_log_dets",
    "snf_tf.export.load_checkpoint": "file I/O",
    "snf_tf.export.load_saved_model": "file I/O",
    # -- snf_tf.callbacks ---------------------------------------------------------------------
    "snf_tf.callbacks.BestValidationTest.on_epoch_end":
        "Keras hook: logs FlowModel.evaluate's numbers (checked there)",
    "snf_tf.callbacks.Geco.on_train_begin": "Keras hook: sets up the averages",
    "snf_tf.callbacks.LinearWarmup.get_config": _CONFIG,
    "snf_tf.callbacks.save_atomically": "file I/O",
    # -- snf_tf.architectures -----------------------------------------------------------------
    "snf_tf.architectures.conv_flow": _BUILDER,
    "snf_tf.architectures.fc_flow": _BUILDER,
    "snf_tf.architectures.glow": _BUILDER,
    "snf_tf.architectures.preprocessing": "builder: returns flow layers",
    # -- snf_tf.checks ------------------------------------------------------------------------
    "snf_tf.checks.check_batch_values": _VALIDATOR,
    "snf_tf.checks.check_data_range": _VALIDATOR,
    "snf_tf.checks.check_fit_data": _VALIDATOR,
    "snf_tf.checks.check_inputs": _VALIDATOR,
    "snf_tf.checks.check_positive_int": _VALIDATOR,
    "snf_tf.checks.check_temperature": _VALIDATOR,
    "snf_tf.checks.naming_the_producer": "context manager: renames an error",
    "snf_tf.checks.outside_data_range": "a predicate of the range checks",
    "snf_tf.checks.range_words": "words of an error message",
    "snf_tf.checks.unit_scaled_message": "words of an error message",
    "snf_tf.checks.unit_scaled_rule_applies": "a predicate of the range checks",
    # -- snf_tf.data, snf_tf.images -----------------------------------------------------------
    "snf_tf.data.default_data_dir": "a folder name",
    "snf_tf.images.save_png": "file I/O",
}

UNCHECKED = {}
