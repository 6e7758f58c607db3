// WHEP playback and WHIP publishing from a page, without a library (RFC 9725 and its WHEP
// mirror): one POST of the offer, the answer in the 201, DELETE of its Location to stop.
// The page sets `video`, `status` and calls whepPlay(url) or whipPublish(url, stream).
// window.arclyRtc keeps the peer connection and timings for whoever wants them (tests do).
const arclyRtc = window.arclyRtc = {pc: null, location: null, postedAt: 0, answeredAt: 0,
                                    firstFrameAt: 0};

async function gathered(pc, ms) {
  // Non-trickle: send the offer with this side's candidates (at most `ms` of gathering).
  if (pc.iceGatheringState === 'complete') return;
  await new Promise(resolve => {
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, ms);
  });
}

async function exchange(url, pc) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, 1000);
  arclyRtc.postedAt = performance.now();
  const response = await fetch(url + location.search, {
    method: 'POST', headers: {'Content-Type': 'application/sdp'},
    body: pc.localDescription.sdp});
  const text = await response.text();
  if (response.status !== 201) throw new Error(response.status + ': ' + text.trim());
  arclyRtc.location = response.headers.get('Location');
  arclyRtc.answeredAt = performance.now();
  await pc.setRemoteDescription({type: 'answer', sdp: text});
}

function watch(pc) {
  arclyRtc.pc = pc;
  pc.addEventListener('connectionstatechange', () => {
    status.textContent = pc.connectionState === 'connected' ? 'connected' : pc.connectionState;
  });
  window.addEventListener('pagehide', () => {
    // The same credentials as the POST: the node ends a session only for them.
    if (arclyRtc.location) {
      fetch(arclyRtc.location + location.search, {method: 'DELETE', keepalive: true});
    }
  });
}

async function whepPlay(url) {
  const pc = new RTCPeerConnection();
  watch(pc);
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  const stream = new MediaStream();
  pc.addEventListener('track', event => {
    stream.addTrack(event.track);
    video.srcObject = stream;
  });
  if (video.requestVideoFrameCallback) {  // when the first picture is on screen
    video.requestVideoFrameCallback(() => { arclyRtc.firstFrameAt = performance.now(); });
  }
  video.addEventListener('playing', () => status.textContent = 'playing');
  try { await exchange(url, pc); } catch (e) { status.textContent = 'error: ' + e.message; }
}

async function whipPublish(url) {
  const pc = new RTCPeerConnection();
  watch(pc);
  try {
    const media = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
    video.srcObject = media;
    for (const track of media.getTracks()) {
      const transceiver = pc.addTransceiver(track, {direction: 'sendonly'});
      // The node passes video through: H.264 is what RTMP, HLS and recordings carry.
      const kind = track.kind === 'video' ? 'video/H264' : 'audio/opus';
      const codecs = RTCRtpSender.getCapabilities(track.kind).codecs
        .filter(c => c.mimeType === kind || c.mimeType === track.kind + '/rtx');
      if (codecs.length) transceiver.setCodecPreferences(codecs);
    }
    await exchange(url, pc);
  } catch (e) { status.textContent = 'error: ' + e.message; }
}
