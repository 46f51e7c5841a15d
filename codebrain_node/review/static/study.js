// Study view: one slice slider drives the synthetic slice and the input slice nearest to it in space;
// window/level per pane; the confidence overlay over the synthetic slice. Images are PNGs from the server.
"use strict";

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function setupPanel(panel) {
  const study = panel.dataset.study;
  const series = panel.dataset.series;
  const positions = JSON.parse(panel.dataset.positions || "[]");
  const inputWindows = JSON.parse(panel.dataset.inputWindows || "{}");
  const q = (selector) => panel.querySelector(selector);
  const slider = q("input.slice");
  if (!slider) return;
  const inputSelect = q(".input-select");
  const inputImage = q(".input-image");
  const syntheticImage = q(".synthetic-image");
  const overlay = q("img.overlay");
  const overlayToggle = q(".overlay-toggle");
  const overlayOpacity = q(".overlay-opacity");
  const inputLevel = q(".input-level"), inputWidth = q(".input-width");
  const synLevel = q(".synthetic-level"), synWidth = q(".synthetic-width");
  const number = q(".slice-number");

  function resetInputWindow() {
    const w = inputSelect && inputWindows[inputSelect.value];
    if (w) { inputLevel.value = w[0]; inputWidth.value = w[1]; } else { inputLevel.value = ""; inputWidth.value = ""; }
  }

  function windowParams(level, width) {
    const params = new URLSearchParams();
    if (level.value !== "") params.set("level", level.value);
    if (width.value !== "") params.set("width", width.value);
    return params;
  }

  function update() {
    const index = Number(slider.value);
    number.textContent = `${index + 1} / ${positions.length}`;
    const synParams = windowParams(synLevel, synWidth);
    synParams.set("index", index);
    syntheticImage.src = `/studies/${study}/series/${series}/slice.png?${synParams}`;
    if (inputSelect && inputSelect.value) {
      const inParams = windowParams(inputLevel, inputWidth);
      const point = positions[index];
      if (point) inParams.set("near", point.join(","));
      else inParams.set("index", index);
      inputImage.src = `/studies/${study}/series/${inputSelect.value}/slice.png?${inParams}`;
    }
    if (overlay) {
      overlay.hidden = !overlayToggle.checked;
      const opacity = Number(overlayOpacity.value) / 100;
      overlay.src = `/studies/${study}/series/${series}/confidence.png?index=${index}&opacity=${opacity}`;
    }
    panel.dataset.shownIndex = String(index);
  }

  const later = debounce(update, 60);
  slider.addEventListener("input", later);
  for (const field of [inputLevel, inputWidth, synLevel, synWidth]) field.addEventListener("input", later);
  if (inputSelect) inputSelect.addEventListener("change", () => { resetInputWindow(); update(); });
  if (overlayToggle) overlayToggle.addEventListener("change", update);
  if (overlayOpacity) overlayOpacity.addEventListener("input", later);
  q(".reset-input").addEventListener("click", () => { resetInputWindow(); update(); });
  q(".reset-synthetic").addEventListener("click", () => {
    synLevel.value = panel.dataset.level; synWidth.value = panel.dataset.width; update();
  });
  resetInputWindow();
  update();
}

document.querySelectorAll("section.synthetic-panel").forEach(setupPanel);
