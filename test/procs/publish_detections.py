"""Child process: publish a fixed vision_msgs/Detection2DArray once a subscriber matched."""

import rclpy
from matched_publish import publish_when_matched
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

rclpy.init()
node = rclpy.create_node('publish_detections')
pub = node.create_publisher(Detection2DArray, 'detections', 10)
msg = Detection2DArray()
msg.header.frame_id = 'camera_optical_frame'
msg.header.stamp.sec = 1234
msg.header.stamp.nanosec = 5678
for i, (cls, score) in enumerate([('person', 0.91), ('person', 0.42), ('cup', 0.77)]):
    det = Detection2D()
    det.header = msg.header
    det.id = f'track-{i}'
    det.bbox.center.position.x = 100.0 + 10 * i
    det.bbox.center.position.y = 200.5
    det.bbox.center.theta = 0.0
    det.bbox.size_x = 40.0 + i
    det.bbox.size_y = 80.25
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id = cls
    hyp.hypothesis.score = score
    hyp.pose.pose.position.z = 1.5 * (i + 1)
    det.results.append(hyp)
    msg.detections.append(det)
publish_when_matched(node, pub, lambda: msg, count=3, period_s=0.1)
node.destroy_node()
rclpy.try_shutdown()
