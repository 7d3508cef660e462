// Live pages poll only while the tab is visible: a hidden tab's polls are cancelled, and
// the badge polls again at once when the tab is shown (its "visibilitychange" trigger).
document.addEventListener("htmx:confirm", function (event) {
  if (document.hidden && event.target.closest("[data-live]")) {
    event.preventDefault();
  }
});
