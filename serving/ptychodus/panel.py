"""The ``PtychoPINN-Serve`` panel of Ptychodus' Reconstructor tab: every option, editable (Qt).

Imported only by the GUI (:mod:`serving.ptychodus.gui`); built with Ptychodus' own parameter widgets,
so edits go straight into the ``[PtychoPINNServe]`` settings that File > Save Settings writes.
"""

from __future__ import annotations

from ptychodus.controller.data import FileDialogFactory
from ptychodus.controller.parameters import ParameterViewBuilder
from ptychodus.controller.processing import ReconstructorViewControllerFactory
from PyQt5.QtCore import QRegularExpression
from PyQt5.QtGui import QRegularExpressionValidator
from PyQt5.QtWidgets import QWidget

from ptycho_torch.choices import NAMED_SCALE_POLICIES
from serving.ptychodus.library import LIBRARY_NAME, PtychoPINNServeLibrary
from serving.ptychodus.settings import BUNDLE_FILE_FILTER, REFINE_ALGORITHMS, REFINE_STARTS

__all__ = ["PtychoPINNServeViewControllerFactory"]

ITERATIONS_PATTERN = "[0-9]{1,4}|[Aa][Uu][Tt][Oo]"
"""What the Iterations box takes while typing: a number or auto (the settings check the range)."""
SCALE_TIP = "scan: normalise by this scan's own patterns; bundle: by the value measured on the training data"


class PtychoPINNServeViewControllerFactory(ReconstructorViewControllerFactory):
    """Builds the panel of ``ONNX`` (bundle, providers, training) and of ``HTTP`` (server, chunks)."""

    def __init__(self, library: PtychoPINNServeLibrary, file_dialog_factory: FileDialogFactory) -> None:
        super().__init__()
        self._settings = library.settings
        self._file_dialog_factory = file_dialog_factory

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def create_view_controller(self, reconstructor_name: str) -> QWidget:
        settings = self._settings
        builder = ParameterViewBuilder(self._file_dialog_factory)
        if reconstructor_name.casefold() == "http":  # Ptychodus passes the casefolded name
            group = "Server"
            builder.add_line_edit(settings.server_url, "Server URL:", tool_tip="address of `ptychopinn serve`",
                                  group=group)
            builder.add_line_edit(settings.server_model, "Model:", group=group,
                                  tool_tip="model name on the server (the bundle name it logs at start-up)")
            builder.add_line_edit(settings.api_token, "API Token:", tool_tip="if the server has --token-file",
                                  group=group)
            builder.add_decimal_line_edit(settings.timeout_s, "Timeout [s]:", group=group)
            builder.add_spin_box(settings.chunk_size, "Chunk Size:", group=group,
                                 tool_tip="patterns per request: one progress step and one chance to stop each")
        else:
            group = "Model"
            builder.add_file_opener(settings.bundle_path, "Bundle:", caption="Choose a PtychoPINN Bundle",
                                    name_filters=[BUNDLE_FILE_FILTER], selected_name_filter=BUNDLE_FILE_FILTER,
                                    tool_tip="bundle .zip or folder from `ptychopinn export` (same as Load Model)",
                                    group=group)
            builder.add_line_edit(settings.providers, "Providers:", group=group,
                                  tool_tip="onnxruntime providers, e.g. cuda,cpu; auto picks the best available")
            training = "Training"
            builder.add_spin_box(settings.train_epochs, "Epochs:", group=training)
            builder.add_spin_box(settings.train_batch_size, "Batch Size:", group=training)
            builder.add_spin_box(settings.train_gridsize, "Grid Size:", group=training)
        builder.add_combo_box(settings.scale_policy, NAMED_SCALE_POLICIES, "Scale Policy:", tool_tip=SCALE_TIP,
                              group="Normalisation")
        refinement = "Physics Refinement"
        builder.add_line_edit(settings.refine_iterations, "Iterations:", group=refinement,
                              validator=QRegularExpressionValidator(QRegularExpression(ITERATIONS_PATTERN)),
                              tool_tip="refinement after the network, with the scan's probe: a number of iterations "
                                       "(0: none) or auto (until the data fit stops improving); the amplitude error "
                                       "per iteration is shown as the losses")
        builder.add_combo_box(settings.refine_algorithm, REFINE_ALGORITHMS, "Algorithm:", group=refinement,
                              tool_tip="default: er for the object alone, rpie with the probe or positions refined; er: "
                                       "whole scan per update; rpie: mini-batches; mpie: rpie with momentum")
        builder.add_combo_box(settings.refine_start, REFINE_STARTS, "Start:", group=refinement,
                              tool_tip="network: refine the network's object; flat: skip the network")
        builder.add_check_box(settings.refine_probe, "Refine Probe", group=refinement,
                              tool_tip="refine the probe with the object; the product gets the refined probe")
        builder.add_check_box(settings.refine_positions, "Refine Positions", group=refinement,
                              tool_tip="correct the scan positions with the object; the product gets them")
        return builder.build_widget()
