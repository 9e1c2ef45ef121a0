"""Drive the stock Ptychodus GUI as a user would (run by ``test_gui.py`` under Xvfb, in its own process).

``python gui_driver.py INPUT_DIR BUNDLE_MANIFEST OUT_DIR``: builds Ptychodus' ``ModelCore``, views and
controllers exactly as ``ptychodus`` (no ``-b``) does, so our library arrives through the plugin hook;
selects the reconstructor in the Algorithm box, edits an option in our panel, loads the batch input,
chooses the folder bundle's ``manifest.json`` in Load Model, presses Infer and waits for the result.
Writes ``OUT_DIR/object.npy`` (the reconstructed object) and ``OUT_DIR/ptychodus.png`` (a screenshot).
Every check is an ``assert``: a failure exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _pump(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main(input_dir: Path, manifest: Path, out_dir: Path) -> None:
    from ptychodus.model import ModelCore

    from serving.ptychodus.registration import library_for

    with ModelCore() as model:
        from PyQt5.QtWidgets import QApplication, QComboBox, QLabel, QLineEdit, QPushButton, QStackedWidget, QToolButton

        app = QApplication(sys.argv[:1])
        from ptychodus.controller import ControllerCore
        from ptychodus.controller.data import FileDialogFactory
        from ptychodus.view import ViewCore

        view = ViewCore(is_developer_mode_enabled=False)
        ControllerCore(model, view).show_main_window("Ptychodus")
        processing = view.processing_view
        app.processEvents()

        algorithm = next(c for c in processing.findChildren(QComboBox)
                         if "ptychopinn-serve_onnx" in [c.itemText(i) for i in range(c.count())])
        names = [algorithm.itemText(i) for i in range(algorithm.count())]
        assert not [n for n in names if n.startswith("ptychopinn-torch")], names  # built-in one is gone
        assert algorithm.currentText() == "ptychopinn-serve_onnx", algorithm.currentText()  # ours is the default
        panels = processing.findChild(QStackedWidget)

        def select(name: str) -> set[str]:
            algorithm.setCurrentText(name)
            algorithm.textActivated.emit(name)  # what a click on the item sends
            app.processEvents()
            assert model.processing_core.algorithm_parameter.get_value() == name
            page = panels.currentWidget()
            assert not isinstance(page, QLabel), page.text()  # not "ptychopinn-serve not found!"
            labels = {label.text() for label in page.findChildren(QLabel)}
            return labels

        assert {"Server URL:", "Chunk Size:"} <= select("ptychopinn-serve_http")
        assert {"Bundle:", "Providers:", "Epochs:", "Scale Policy:"} <= select("ptychopinn-serve_onnx")

        # the panel edits the settings (Ptychodus 1.7's Settings table cannot)
        providers = next(e for e in panels.currentWidget().findChildren(QLineEdit) if e.text() == "auto")
        providers.setText("cpu")
        providers.editingFinished.emit()
        settings = library_for(model.processing_core.processing_api).settings
        assert settings.providers.get_value() == "cpu"

        diffraction = model.workflow_api.load_assembled_diffraction_data(input_dir / "diffraction.h5")
        model.workflow_api.load_product(input_dir / "product.h5", diffraction=diffraction)
        _pump(app, 1.5)

        # Load Model: the file dialog answers with the folder bundle's manifest.json
        FileDialogFactory.get_open_file_path = lambda self, *args, **kwargs: (manifest, "")  # type: ignore[method-assign]
        actions = [a for b in processing.findChildren(QToolButton) if b.menu() for a in b.menu().actions()]
        next(a for a in actions if a.text() == "Load Model...").trigger()
        assert settings.bundle() == manifest.parent, settings.bundle()
        infer = next(b for b in processing.findChildren(QPushButton) if b.text() == "Infer")
        assert infer.isEnabled()

        repository = model.product_core.product_repository
        before = len(repository)
        monitor = model.processing_core.processing_api.task_monitor
        runs = monitor.get_completed_runs()
        infer.click()
        deadline = time.monotonic() + 180
        while monitor.get_completed_runs() == runs and time.monotonic() < deadline:
            _pump(app, 0.1)
        assert monitor.get_last_error() is None, monitor.get_last_error()
        assert len(repository) == before + 1
        _pump(app, 2.5)  # the GUI's 1 s timer applies the result to the output product
        obj = repository[before].get_product().object_.get_layer(0)
        assert np.count_nonzero(obj != 1) > 0.5 * obj.size, "the output product still holds the initial guess"
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "object.npy", obj)
        view.processing_action.trigger()  # show the Processing tab, our panel and the log in the screenshot
        _pump(app, 0.5)
        view.grab().save(str(out_dir / "ptychodus.png"))
        view.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
